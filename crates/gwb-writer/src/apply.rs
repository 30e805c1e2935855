//! Applying a batch of commands from one partition: in order per group, with
//! consecutive member changes of a group merged into one directory write, and one
//! publisher-confirm round trip for all the batch's outcomes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::Mutex;

use gwb_bus::{Delivery, Disposition, Message, Route};
use gwb_core::command::{ApplyReport, FailureClass, GroupSpec, MemberRef, WriteCommand};
use gwb_ldap::Directory;
use gwb_proto::commands::v1 as cmd;

use crate::{Shared, backoff, convert, fill_failure, fill_report, now_ms, observe_ldap, record_outcome};

/// One or two directory writes standing for one or more commands (by delivery index).
struct Unit {
    indices: Vec<usize>,
    command: WriteCommand,
    /// For a run of member changes: each value's final state (true = member).
    net: Option<std::collections::BTreeMap<MemberRef, bool>>,
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
enum Write {
    Command(WriteCommand),
    /// An upsert and the members to add right after it (in the create, when new).
    UpsertWithMembers(GroupSpec, Vec<MemberRef>),
}

impl Write {
    fn kind(&self) -> &'static str {
        match self {
            Write::Command(command) => command.kind(),
            Write::UpsertWithMembers(..) => "upsert_with_members",
        }
    }

    fn anchor(&self) -> &str {
        match self {
            Write::Command(command) => command.anchor(),
            Write::UpsertWithMembers(spec, _) => &spec.anchor,
        }
    }
}

/// The writes a unit stands for: the command itself, or a member run's net removals
/// then additions (after the upsert it followed, if any).
fn writes(unit: &Unit) -> Vec<Write> {
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

fn member_refs(command: &WriteCommand) -> BTreeSet<MemberRef> {
    match command {
        WriteCommand::AddMembers { members, .. } | WriteCommand::RemoveMembers { members, .. } => {
            members.iter().cloned().collect()
        }
        _ => BTreeSet::new(),
    }
}

pub async fn handle_batch(
    shared: Arc<Shared>,
    directory: Arc<Mutex<Option<Directory>>>,
    deliveries: Vec<Delivery>,
) -> Vec<Disposition> {
    let count = deliveries.len();
    let mut dispositions = vec![Disposition::Requeue; count];
    // (delivery index, outcome, disposition once the outcome is confirmed)
    let mut outcomes: Vec<(usize, cmd::Outcome, Disposition)> = Vec::with_capacity(count);
    let mut commands: Vec<Option<(cmd::WriteCommand, WriteCommand)>> = Vec::with_capacity(count);
    for (index, delivery) in deliveries.iter().enumerate() {
        if delivery.kind.as_deref() != Some(gwb_bus::COMMAND_TYPE) {
            tracing::error!(message_id = ?delivery.message_id, kind = ?delivery.kind, "command of an unknown type or version dead-lettered");
            dispositions[index] = Disposition::DeadLetter;
            commands.push(None);
            continue;
        }
        let Ok(command) = cmd::WriteCommand::decode(delivery.payload.as_slice()) else {
            tracing::error!(message_id = ?delivery.message_id, "undecodable command dead-lettered");
            dispositions[index] = Disposition::DeadLetter;
            commands.push(None);
            continue;
        };
        match convert::to_domain(&command) {
            Ok(domain) => commands.push(Some((command, domain))),
            Err(reason) => {
                tracing::error!(command_id = %command.command_id, %reason, "impossible command dead-lettered");
                let mut outcome = base_outcome(&shared, &command);
                outcome.kind = "invalid".into();
                outcome.status = cmd::OutcomeStatus::Failed as i32;
                outcome.message = format!("invalid command: {reason}");
                outcome.completed_at_ms = now_ms();
                outcomes.push((index, outcome, Disposition::DeadLetter));
                commands.push(None);
            }
        }
    }

    let mut units = Vec::new();
    let mut last_of_group = HashMap::new();
    for (index, entry) in commands.iter().enumerate() {
        if let Some((_, domain)) = entry {
            push_merged(&mut units, &mut last_of_group, index, domain.clone());
        }
    }

    if shared.pause.reason().is_some() {
        tokio::select! {
            _ = shared.pause.wait_until_running() => {}
            _ = shared.shutdown.triggered() => {}
        }
    }
    let mut guard = directory.lock().await;
    if !shared.dry_run {
        look_up_anchors(&shared, &mut guard, &units).await;
    }
    for unit in units {
        if shared.shutdown.is_triggered() {
            // Not applied: left unacked (Requeue) for the next writer.
            break;
        }
        let mut result = Some(Ok(ApplyReport::default()));
        if !shared.dry_run {
            for write in writes(&unit) {
                result = match result {
                    Some(Ok(total)) => apply_with_retry(&shared, &mut guard, &write)
                        .await
                        .map(|r| r.map(|next| total.combined_with(next))),
                    other => other,
                };
            }
        }
        let Some(result) = result else { break };
        let last = unit.indices.last().copied();
        for &index in &unit.indices {
            let Some((command, domain)) = &commands[index] else { continue };
            let mut outcome = base_outcome(&shared, command);
            outcome.kind = domain.kind().to_string();
            let disposition = match &result {
                Ok(_) if shared.dry_run => {
                    outcome.status = cmd::OutcomeStatus::DryRun as i32;
                    Disposition::Ack
                }
                Ok(report) => {
                    // The merged write's counts go to its last command; every command
                    // gets the group and the refusals of its own member values.
                    let own = member_refs(domain);
                    let mut mine = ApplyReport {
                        group: report.group.clone(),
                        changed: report.changed,
                        members_rejected: report
                            .members_rejected
                            .iter()
                            .filter(|(m, _)| own.contains(m))
                            .cloned()
                            .collect(),
                        ..ApplyReport::default()
                    };
                    if Some(index) == last {
                        mine.members_added = report.members_added;
                        mine.members_removed = report.members_removed;
                        mine.members_unchanged = report.members_unchanged;
                    }
                    fill_report(&mut outcome, mine);
                    outcome.status = cmd::OutcomeStatus::Applied as i32;
                    Disposition::Ack
                }
                Err(error) => {
                    tracing::error!(%error, kind = %outcome.kind, group = %command.group_id, "command failed permanently; dead-lettered");
                    fill_failure(&mut outcome, error);
                    Disposition::DeadLetter
                }
            };
            outcome.completed_at_ms = now_ms();
            outcomes.push((index, outcome, disposition));
        }
    }
    drop(guard);

    if outcomes.is_empty() {
        return dispositions;
    }
    let batch: Vec<(Route, Message)> = outcomes
        .iter()
        .map(|(_, outcome, _)| {
            let message = Message {
                id: format!("outcome-{}", outcome.command_id),
                kind: "gwb.commands.v1.Outcome",
                payload: outcome.encode_to_vec(),
                headers: Default::default(),
                timestamp_ms: now_ms(),
            };
            (Route::Outcomes, message)
        })
        .collect();
    match shared.publisher.publish_all(&batch).await {
        Ok(()) => {
            for (index, outcome, disposition) in &outcomes {
                record_outcome(outcome);
                dispositions[*index] = *disposition;
            }
        }
        Err(error) => {
            // Unconfirmed outcomes: leave the commands to be applied again (harmless).
            tracing::warn!(%error, "could not publish outcomes; the commands will be applied again");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    dispositions
}

fn base_outcome(shared: &Shared, command: &cmd::WriteCommand) -> cmd::Outcome {
    cmd::Outcome {
        command_id: command.command_id.clone(),
        group_id: command.group_id.clone(),
        sequence: command.sequence,
        observed_at_ms: command.observed_at_ms,
        writer_id: shared.writer_id.clone(),
        ..Default::default()
    }
}

/// One search for the anchors of the whole batch instead of one per command (see
/// `Directory::look_up_anchors`). Best effort: on any failure each command looks its
/// group up itself, and the retry loop reports the error.
async fn look_up_anchors(shared: &Shared, directory: &mut Option<Directory>, units: &[Unit]) {
    if directory.is_none()
        && let Ok(mut connected) = Directory::connect(shared.directory_config.clone()).await
    {
        connected.set_observer(Arc::new(observe_ldap));
        *directory = Some(connected);
    }
    let Some(connected) = directory.as_mut() else { return };
    let anchors: Vec<&str> = units.iter().map(|unit| unit.command.anchor()).collect();
    if let Err(error) = connected.look_up_anchors(&anchors).await {
        tracing::debug!(%error, "batch anchor lookup failed; each command looks its group up itself");
    }
}

/// Applies one write, retrying transient directory errors in place (a partition never
/// moves past a command it could not apply). `None` when shutdown interrupted it.
async fn apply_with_retry(
    shared: &Shared,
    directory: &mut Option<Directory>,
    write: &Write,
) -> Option<Result<ApplyReport, gwb_ldap::DirectoryError>> {
    let mut failures = 0u32;
    loop {
        if shared.shutdown.is_triggered() {
            return None;
        }
        let connected = match directory.as_mut() {
            Some(connected) => Ok(connected),
            None => match Directory::connect(shared.directory_config.clone()).await {
                Ok(mut connected) => {
                    connected.set_observer(Arc::new(observe_ldap));
                    Ok(directory.insert(connected))
                }
                Err(error) => Err(error),
            },
        };
        let result = match (connected, write) {
            (Ok(connected), Write::Command(command)) => connected.apply(command).await,
            (Ok(connected), Write::UpsertWithMembers(spec, members)) => {
                connected.upsert_with_members(spec, members).await
            }
            (Err(error), _) => Err(error),
        };
        match result {
            Err(error) if error.class == FailureClass::Transient => {
                failures += 1;
                let delay = backoff(failures);
                tracing::warn!(%error, kind = write.kind(), anchor = write.anchor(), retry_in_ms = delay.as_millis() as u64, "directory unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.shutdown.triggered() => {}
                }
            }
            other => return Some(other),
        }
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
        let mut units = Vec::new();
        let mut last = HashMap::new();
        for (index, command) in sequence.into_iter().enumerate() {
            push_merged(&mut units, &mut last, index, command);
        }
        units
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
