//! Drift planning: observations compared with the desired state, repairs, report and
//! off modes, the contested rule.

use gwb_core::drift::{DriftMode, DriftPolicy, Observation, ObservedGroup, ObservedMember};

use super::*;
use crate::plan::DriftRequest;
use crate::store::DriftQueries as _;

const GUID: &str = "0000000a-0000-0000-0000-000000000001";
const DN: &str = "CN=g1,OU=G,DC=lab";

/// Reports every command in the outbox as applied (the group at `DN` with `GUID`), so
/// nothing is in flight; returns their kinds.
fn settle(engine: &mut TestEngine) -> Vec<String> {
    let rows = engine.outbox_batch(100_000).unwrap();
    if let Some(last) = rows.last() {
        engine.outbox_published(last.seq).unwrap();
    }
    let mut kinds = Vec::new();
    for row in rows {
        let (wire, command) = command_of(&row.payload);
        let outcome = cmd::Outcome {
            command_id: wire.command_id.clone(),
            group_id: wire.group_id.clone(),
            sequence: wire.sequence,
            kind: command.kind().into(),
            status: cmd::OutcomeStatus::Applied as i32,
            group: Some(cmd::AppliedGroup {
                dn: DN.into(),
                object_guid: GUID.into(),
                object_sid: "S-1-5-21-1-2-3-9000".into(),
                sam_account_name: "g1".into(),
            }),
            ..Default::default()
        };
        engine.apply_outcome(&outcome, &at(0)).unwrap();
        kinds.push(command.kind().to_string());
    }
    kinds
}

fn member(n: u32) -> ObservedMember {
    ObservedMember {
        guid: format!("1111111{}-0000-0000-0000-000000000000", n % 10),
        sid: Some(format!("{SID}{}", 1000 + n)),
        dn: format!("CN=u{n},OU=U,DC=lab"),
    }
}

/// g1 as the writer wrote it, with users 1 and 2.
fn as_written() -> ObservedGroup {
    ObservedGroup {
        object_guid: GUID.into(),
        dn: DN.into(),
        anchor: Some("Group_g1".into()),
        in_managed_ous: true,
        attributes: vec![
            ("groupType".into(), vec!["-2147483640".into()]),
            ("displayName".into(), vec!["G1".into()]),
            ("description".into(), vec![]),
        ],
        members: vec![member(1), member(2)],
        when_changed: "20261202120000.0Z".into(),
        ..Default::default()
    }
}

/// Applies the observation; the commands it planned (left in the outbox, in flight
/// until [`settle`]).
fn observe(engine: &mut TestEngine, group: ObservedGroup, now_ms: i64) -> Vec<(String, usize)> {
    let waiting = engine.outbox_batch(100_000).unwrap().len();
    let observation =
        Observation { writer_id: "w".into(), dc: "dc1".into(), groups: vec![group], ..Default::default() };
    engine.apply_observation(&observation, &at(now_ms)).unwrap();
    engine.outbox_batch(100_000).unwrap()[waiting..]
        .iter()
        .map(|row| {
            let (_, command) = command_of(&row.payload);
            let values = match &command {
                WriteCommand::AddMembers { members, .. } | WriteCommand::RemoveMembers { members, .. } => members.len(),
                _ => 0,
            };
            (command.kind().to_string(), values)
        })
        .collect()
}

fn written(policy: DriftPolicy) -> TestEngine {
    let mut engine = engine(DeletionThreshold::default());
    engine.policy.drift = policy;
    for n in [1, 2, 3] {
        engine.apply_event(&user(n), 0).unwrap();
    }
    engine.apply_event(&group("g1", [1, 2], []), 0).unwrap();
    settle(&mut engine);
    assert_eq!(engine.state("g1"), Some(WritebackState::Written));
    engine
}

fn history(engine: &TestEngine) -> Vec<(String, String)> {
    engine.store().drift_detail("g1", 20).unwrap().1.into_iter().map(|h| (h.kind, h.action)).collect()
}

#[test]
fn the_desired_state_and_groups_with_commands_in_flight_are_no_drift() {
    let mut engine = written(DriftPolicy::default());
    assert!(observe(&mut engine, as_written(), 1).is_empty());
    // The cloud adds user 3: until its command's outcome, AD may show either state.
    engine.apply_event(&group("g1", [3], []), 0).unwrap();
    let mut partial = as_written();
    partial.members.push(member(3));
    partial.members.push(member(4));
    assert!(observe(&mut engine, partial.clone(), 2).is_empty(), "observed while in flight");
    settle(&mut engine);
    assert!(history(&engine).is_empty());
    // Settled: the hand-added member 4 is drift now, user 3 is not.
    assert_eq!(observe(&mut engine, partial, 3), vec![("remove_members".to_string(), 1)]);
    assert_eq!(history(&engine), vec![("member_added".to_string(), "repaired".to_string())]);
}

#[test]
fn hand_edits_are_repaired_with_ordinary_commands() {
    let mut engine = written(DriftPolicy::default());
    let mut edited = as_written();
    edited.members = vec![member(1), member(7)];
    edited.attributes[2].1 = vec!["by hand".into()];
    edited.dn = "CN=renamed,OU=G,DC=lab".into();
    let commands = observe(&mut engine, edited, 1);
    assert_eq!(
        commands,
        vec![("upsert".to_string(), 0), ("remove_members".to_string(), 1), ("add_members".to_string(), 1)]
    );
    let rows: Vec<String> = engine.store().audit_log("g1", 50).unwrap().into_iter().map(|a| a.cause).collect();
    assert!(rows.iter().any(|c| c.starts_with("AD edit (whenChanged 20261202120000.0Z): renamed")), "{rows:?}");
}

#[test]
fn a_deleted_group_is_reanimated_then_written_again_in_full() {
    let mut engine = written(DriftPolicy::default());
    let mut tombstone = as_written();
    tombstone.deleted = true;
    tombstone.members.clear();
    tombstone.attributes.clear();
    tombstone.dn = format!("CN=g1\\0ADEL:{GUID},CN=Deleted Objects,DC=lab");
    let commands = observe(&mut engine, tombstone, 1);
    assert_eq!(commands, vec![("reanimate".into(), 0), ("upsert".into(), 0), ("add_members".into(), 2)]);
}

#[test]
fn report_mode_records_and_off_ignores() {
    let mut engine = written(DriftPolicy { mode: DriftMode::Report, ..DriftPolicy::default() });
    let mut edited = as_written();
    edited.attributes[1].1 = vec!["by hand".into()];
    assert!(observe(&mut engine, edited.clone(), 1).is_empty());
    assert_eq!(history(&engine), vec![("attribute".to_string(), "reported".to_string())]);
    let request = DriftRequest { mode: Some(Some(DriftMode::Off)), uncontest: false };
    engine.set_group_drift("g1", request, &at(2)).unwrap();
    assert!(observe(&mut engine, edited.clone(), 3).is_empty());
    assert_eq!(history(&engine).len(), 1, "off records nothing");
    let request = DriftRequest { mode: Some(Some(DriftMode::Repair)), uncontest: false };
    engine.set_group_drift("g1", request, &at(4)).unwrap();
    assert_eq!(observe(&mut engine, edited, 5), vec![("upsert".to_string(), 0)]);
}

#[test]
fn the_same_drift_too_often_makes_the_group_contested_until_the_operator_clears_it() {
    let policy = DriftPolicy { contest_repeats: 2, contest_window_ms: 600_000, ..DriftPolicy::default() };
    let mut engine = written(policy);
    let mut edited = as_written();
    edited.attributes[2].1 = vec!["the other engine's".into()];
    for now in [1, 2] {
        assert_eq!(observe(&mut engine, edited.clone(), now), vec![("upsert".to_string(), 0)]);
        settle(&mut engine);
    }
    // A different attribute is another drift: it does not count towards this one.
    let mut other = as_written();
    other.attributes[1].1 = vec!["x".into()];
    assert_eq!(observe(&mut engine, other, 3), vec![("upsert".to_string(), 0)]);
    settle(&mut engine);
    assert!(observe(&mut engine, edited.clone(), 4).is_empty(), "the third time is a fight");
    let (row, _) = engine.store().drift_detail("g1", 20).unwrap();
    let reason = row.contested.unwrap();
    assert!(reason.contains("came back 3 times within 10 min (description changed"), "{reason}");
    assert_eq!(engine.store().contested_count().unwrap(), 1);
    // Nothing is sent for a contested group, not even a cloud change.
    engine.apply_event(&group("g1", [3], []), 5).unwrap();
    assert!(engine.outbox_batch(10).unwrap().is_empty());
    assert!(observe(&mut engine, edited.clone(), 6).is_empty());
    // Outside the window the count starts again; but first the operator clears it.
    let request = DriftRequest { mode: None, uncontest: true };
    engine.set_group_drift("g1", request, &at(7)).unwrap();
    assert_eq!(drain(&mut engine), vec![("upsert".to_string(), 0), ("add_members".to_string(), 3)]);
    for row in engine.store().audit_log("g1", 100).unwrap() {
        if row.result == "planned" {
            engine.apply_outcome(&cmd::Outcome { command_id: row.command_id, ..Default::default() }, &at(7)).unwrap();
        }
    }
    assert_eq!(engine.store().contested_count().unwrap(), 0);
    settle(&mut engine);
    let mut edited_later = edited;
    edited_later.members.push(member(3));
    assert_eq!(observe(&mut engine, edited_later, 700_000), vec![("upsert".to_string(), 0)]);
}

#[test]
fn a_group_moved_out_is_reported_contested_and_never_followed() {
    let mut engine = written(DriftPolicy::default());
    let mut moved = as_written();
    moved.in_managed_ous = false;
    moved.dn = "CN=g1,OU=Elsewhere,DC=lab".into();
    assert!(observe(&mut engine, moved, 1).is_empty());
    let (row, _) = engine.store().drift_detail("g1", 20).unwrap();
    assert!(row.contested.unwrap().contains("moved out of the managed OUs to CN=g1,OU=Elsewhere,DC=lab"));
    engine.apply_event(&group("g1", [3], []), 2).unwrap();
    assert!(engine.outbox_batch(10).unwrap().is_empty(), "an upsert would recreate it beside the moved one");
    // An unknown objectGUID is not ours: never compared.
    let mut stranger = as_written();
    stranger.object_guid = "0000000f-0000-0000-0000-00000000000f".into();
    stranger.members.clear();
    assert!(observe(&mut engine, stranger, 3).is_empty());
}
