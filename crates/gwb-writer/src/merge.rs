//! How a batch of one partition's commands becomes directory writes: in order per
//! group, with consecutive member changes of a group merged into one net change (and
//! joined to the upsert they follow). Pure: no I/O, so every shape is unit-tested.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gwb_core::command::{GroupSpec, MemberRef, WriteCommand};

/// The units for a batch's decodable commands, given with their delivery index.
pub(crate) fn units<'c>(commands: impl IntoIterator<Item = (usize, &'c WriteCommand)>) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut last_of_group = HashMap::new();
    for (index, command) in commands {
        push_merged(&mut units, &mut last_of_group, index, command.clone());
    }
    units
}

/// One or two directory writes standing for one or more commands (by delivery index).
pub(crate) struct Unit {
    pub(crate) indices: Vec<usize>,
    pub(crate) command: WriteCommand,
    /// For a run of member changes: each value's final state (true = member).
    net: Option<BTreeMap<MemberRef, bool>>,
}

/// Appends `command` to the units. A run of member changes of one group (nothing else
/// of that group between them) becomes one net change: per value, the last add or
/// remove wins, then removals and additions are written as one write each. The group's
/// own order is kept; other groups' commands may interleave, which changes nothing.
fn push_merged(units: &mut Vec<Unit>, last_of_group: &mut HashMap<String, usize>, index: usize, command: WriteCommand) {
    let anchor = command.anchor().to_string();
    let incoming = match &command {
        WriteCommand::AddMembers { members, .. } => Some((members, true)),
        WriteCommand::RemoveMembers { members, .. } => Some((members, false)),
        _ => None,
    };
    if let (Some(&position), Some((members, add))) = (last_of_group.get(&anchor), incoming)
        && let Some(net) = &mut units[position].net
    {
        for member in members {
            net.insert(member.clone(), add);
        }
        units[position].indices.push(index);
        return;
    }
    let net = match (&command, incoming) {
        (_, Some((members, add))) => Some(members.iter().map(|m| (m.clone(), add)).collect()),
        // Member changes right after an upsert join it: a new group is then created
        // with its members in one write.
        (WriteCommand::Upsert(_), None) => Some(Default::default()),
        _ => None,
    };
    last_of_group.insert(anchor, units.len());
    units.push(Unit { indices: vec![index], command, net });
}

/// One directory write.
pub(crate) enum Write {
    Command(WriteCommand),
    /// An upsert and the members to add right after it (in the create, when new).
    UpsertWithMembers(GroupSpec, Vec<MemberRef>),
}

impl Write {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Write::Command(command) => command.kind(),
            Write::UpsertWithMembers(..) => "upsert_with_members",
        }
    }

    pub(crate) fn anchor(&self) -> &str {
        match self {
            Write::Command(command) => command.anchor(),
            Write::UpsertWithMembers(spec, _) => &spec.anchor,
        }
    }
}

/// The writes a unit stands for: the command itself, or a member run's net removals
/// then additions (after the upsert it followed, if any).
pub(crate) fn writes(unit: &Unit) -> Vec<Write> {
    let Some(net) = &unit.net else { return vec![Write::Command(unit.command.clone())] };
    let anchor = unit.command.anchor().to_string();
    let removals: Vec<MemberRef> = net.iter().filter(|(_, add)| !**add).map(|(m, _)| m.clone()).collect();
    let additions: Vec<MemberRef> = net.iter().filter(|(_, add)| **add).map(|(m, _)| m.clone()).collect();
    let mut writes = Vec::new();
    match &unit.command {
        WriteCommand::Upsert(spec) if removals.is_empty() => {
            return vec![Write::UpsertWithMembers(spec.clone(), additions)];
        }
        WriteCommand::Upsert(_) => writes.push(Write::Command(unit.command.clone())),
        _ => {}
    }
    if !removals.is_empty() {
        writes.push(Write::Command(WriteCommand::RemoveMembers { anchor: anchor.clone(), members: removals }));
    }
    if !additions.is_empty() {
        writes.push(Write::Command(WriteCommand::AddMembers { anchor, members: additions }));
    }
    writes
}

pub(crate) fn member_refs(command: &WriteCommand) -> BTreeSet<MemberRef> {
    match command {
        WriteCommand::AddMembers { members, .. } | WriteCommand::RemoveMembers { members, .. } => {
            members.iter().cloned().collect()
        }
        _ => BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(anchor: &str, sids: &[&str]) -> WriteCommand {
        WriteCommand::AddMembers {
            anchor: anchor.into(),
            members: sids.iter().map(|s| MemberRef::Sid(s.to_string())).collect(),
        }
    }

    fn remove(anchor: &str, sids: &[&str]) -> WriteCommand {
        WriteCommand::RemoveMembers {
            anchor: anchor.into(),
            members: sids.iter().map(|s| MemberRef::Sid(s.to_string())).collect(),
        }
    }

    fn merged(sequence: impl IntoIterator<Item = WriteCommand>) -> Vec<Unit> {
        let sequence: Vec<WriteCommand> = sequence.into_iter().collect();
        units(sequence.iter().enumerate())
    }

    /// (delivery indices, [(write kind, member keys)]) per unit.
    type Shape = Vec<(Vec<usize>, Vec<(&'static str, Vec<String>)>)>;

    fn shape(units: &[Unit]) -> Shape {
        units
            .iter()
            .map(|u| {
                let writes = writes(u)
                    .iter()
                    .map(|w| match w {
                        Write::Command(command) => {
                            (w.kind(), member_refs(command).into_iter().map(|m| m.key()).collect())
                        }
                        Write::UpsertWithMembers(_, members) => {
                            (w.kind(), members.iter().map(MemberRef::key).collect())
                        }
                    })
                    .collect();
                (u.indices.clone(), writes)
            })
            .collect()
    }

    #[test]
    fn a_run_of_member_changes_becomes_one_net_change_without_reordering_the_group() {
        let sequence = [
            add("A", &["1"]),
            add("B", &["2"]),
            add("A", &["3"]),
            remove("A", &["1", "9"]),
            add("A", &["4"]),
            WriteCommand::Delete { anchor: "B".into() },
            add("B", &["5"]),
            WriteCommand::Delete { anchor: "A".into() },
            add("A", &["6"]),
        ];
        let key = |s: &str| format!("sid:{s}");
        assert_eq!(
            shape(&merged(sequence)),
            vec![
                (
                    vec![0, 2, 3, 4],
                    vec![("remove_members", vec![key("1"), key("9")]), ("add_members", vec![key("3"), key("4")])]
                ),
                (vec![1], vec![("add_members", vec![key("2")])]),
                (vec![5], vec![("delete", vec![])]),
                (vec![6], vec![("add_members", vec![key("5")])]),
                (vec![7], vec![("delete", vec![])]),
                (vec![8], vec![("add_members", vec![key("6")])]),
            ]
        );
    }

    fn upsert(anchor: &str) -> WriteCommand {
        WriteCommand::Upsert(GroupSpec {
            object_id: anchor.into(),
            anchor: anchor.into(),
            cn: anchor.into(),
            parent_dn: "OU=G,DC=lab".into(),
            sam_account_name_candidates: vec![anchor.into()],
            group_type: gwb_core::command::GroupType::UniversalSecurity,
            display_name: anchor.into(),
            description: None,
            mail: None,
            on_premises_sid: None,
        })
    }

    #[test]
    fn members_right_after_an_upsert_join_it_and_a_removal_keeps_them_apart() {
        let sequence = [
            upsert("A"),
            add("A", &["1", "2"]),
            add("A", &["3"]),
            upsert("B"),
            add("B", &["4"]),
            remove("B", &["9"]),
            upsert("C"),
        ];
        let key = |s: &str| format!("sid:{s}");
        assert_eq!(
            shape(&merged(sequence)),
            vec![
                (vec![0, 1, 2], vec![("upsert_with_members", vec![key("1"), key("2"), key("3")])]),
                (
                    vec![3, 4, 5],
                    vec![("upsert", vec![]), ("remove_members", vec![key("9")]), ("add_members", vec![key("4")])]
                ),
                (vec![6], vec![("upsert_with_members", vec![])]),
            ]
        );
    }
}
