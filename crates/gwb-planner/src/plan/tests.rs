//! Planning over an in-memory SQLite store.

mod drift;

use prost::Message as _;

use gwb_core::command::{CommandKind, MemberRef, WriteCommand};
use gwb_core::deletion::{DeletionThreshold, MemberRemovalThreshold};
use gwb_core::event::{
    Change, ChangeEvent, GroupObserved, MemberLink, ObjectRemoved, RemovalReason, Resource, RoundBoundary, UserObserved,
};
use gwb_core::members::MemberKind;
use gwb_core::naming::NameTemplate;
use gwb_core::policy::{Placement, Scope};
use gwb_core::state::WritebackState;
use gwb_proto::commands::v1 as cmd;

use super::{Engine, EngineError, Incoming, Origin, PolicySettings};
use crate::config::{RemovalAction, UserSoftDelete};
use crate::store::queries::Queries;
use crate::store::sqlite::SqliteStore;
use crate::store::{Counter, Store, StoreTx};

type TestEngine = Engine<SqliteStore>;

fn at(now_ms: i64) -> Origin {
    Origin { now_ms, trace: String::new() }
}

impl TestEngine {
    /// Applies one change event in its own transaction. Returns false for an event id
    /// applied before.
    fn apply_event(&mut self, event: &ChangeEvent, now_ms: i64) -> Result<bool, EngineError> {
        let mut tx = self.store.transaction()?;
        let mut planned = super::Planned::default();
        let fresh = super::apply_one(&mut tx, &self.policy, event, &at(now_ms), &mut planned)?;
        tx.commit()?;
        Ok(fresh)
    }

    fn state(&mut self, group_id: &str) -> Option<WritebackState> {
        let tx = self.store.transaction().unwrap();
        tx.writeback(group_id).unwrap().map(|row| row.state)
    }
}

const SID: &str = "S-1-5-21-1-2-3-";

fn engine(threshold: DeletionThreshold) -> TestEngine {
    let db = SqliteStore::open(std::path::Path::new(":memory:")).unwrap();
    let policy = PolicySettings {
        scope: Scope { all_security_groups: true, ..Default::default() },
        placement: Placement {
            default_ou: "OU=G,DC=lab".into(),
            security_ou: None,
            distribution_ou: None,
            name_template: NameTemplate::ObjectId,
        },
        member_batch_size: 500,
        on_leave_scope: RemovalAction::Keep,
        on_soft_delete: RemovalAction::Keep,
        on_user_soft_delete: UserSoftDelete::Keep,
        retired_ou: None,
        partitions: 4,
        threshold,
        member_removals: MemberRemovalThreshold::default(),
        drift: gwb_core::drift::DriftPolicy::default(),
    };
    let mut engine = Engine::new(db, policy);
    engine.set_writeback(true, false, &at(0)).unwrap();
    engine
}

fn event(change: Change) -> ChangeEvent {
    ChangeEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        cause: "test".into(),
        observed_at_ms: 1,
        round_id: "r1".into(),
        round_position: 0,
        change,
    }
}

fn user(n: u32) -> ChangeEvent {
    event(Change::User(UserObserved {
        id: format!("u{n}"),
        on_premises_security_identifier: Some(format!("{SID}{}", 1000 + n)),
        on_premises_sync_enabled: Some(true),
        ..Default::default()
    }))
}

fn group(id: &str, added: impl IntoIterator<Item = u32>, removed: impl IntoIterator<Item = u32>) -> ChangeEvent {
    let link = |n: u32| MemberLink { id: format!("u{n}"), kind: MemberKind::User };
    event(Change::Group(GroupObserved {
        id: id.into(),
        display_name: Some(id.to_uppercase()),
        security_enabled: Some(true),
        mail_enabled: Some(false),
        members_added: added.into_iter().map(link).collect(),
        members_removed: removed.into_iter().map(link).collect(),
        ..Default::default()
    }))
}

fn removed(id: &str, hard: bool) -> ChangeEvent {
    let reason = if hard { RemovalReason::Deleted } else { RemovalReason::Changed };
    event(Change::GroupRemoved(ObjectRemoved { id: id.into(), reason }))
}

fn round_completed() -> ChangeEvent {
    event(Change::RoundCompleted(RoundBoundary { resource: Resource::Groups, full: false }))
}

/// An event the engine refuses: it has no id, so a redelivery could not be told apart.
fn without_id(event: ChangeEvent) -> ChangeEvent {
    ChangeEvent { event_id: String::new(), ..event }
}

/// The domain command an outbox row carries, read back as the writer reads it.
fn command_of(payload: &[u8]) -> (cmd::WriteCommand, WriteCommand) {
    let wire = cmd::WriteCommand::decode(payload).unwrap();
    let command = WriteCommand::try_from(&wire).unwrap();
    (wire, command)
}

/// Takes the outbox: (kind, number of member values) per command.
fn drain(engine: &mut TestEngine) -> Vec<(String, usize)> {
    let rows = engine.outbox_batch(100_000).unwrap();
    if let Some(last) = rows.last() {
        engine.outbox_published(last.seq).unwrap();
    }
    rows.iter()
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

#[test]
fn a_membership_change_costs_one_command_whatever_the_group_size() {
    let mut engine = engine(DeletionThreshold::default());
    for n in 0..2000 {
        engine.apply_event(&user(n), 0).unwrap();
    }
    engine.apply_event(&group("g1", 0..1999, []), 0).unwrap();
    let first = drain(&mut engine);
    assert_eq!(first[0], ("upsert".to_string(), 0));
    assert_eq!(first[1..].iter().map(|(_, n)| n).sum::<usize>(), 1999);
    assert!(first[1..].iter().all(|(kind, n)| kind == "add_members" && *n <= 500), "{first:?}");
    engine.apply_event(&group("g1", [1999], []), 0).unwrap();
    assert_eq!(drain(&mut engine), vec![("add_members".to_string(), 1)]);
    engine.apply_event(&group("g1", [], [5]), 0).unwrap();
    assert_eq!(drain(&mut engine), vec![("remove_members".to_string(), 1)]);
}

#[test]
fn replays_and_duplicates_change_nothing() {
    let mut engine = engine(DeletionThreshold::default());
    engine.apply_event(&user(1), 0).unwrap();
    let created = group("g1", [1], []);
    assert!(engine.apply_event(&created, 0).unwrap());
    assert_eq!(drain(&mut engine).len(), 2);
    assert!(!engine.apply_event(&created, 0).unwrap(), "same event id applied twice");
    // Graph replays the same content under a new event id: nothing to do.
    engine.apply_event(&group("g1", [1], []), 0).unwrap();
    assert!(drain(&mut engine).is_empty());
}

#[test]
fn cloud_deletions_wait_for_the_end_of_the_cycle_and_pass_the_threshold() {
    let mut engine = engine(DeletionThreshold { max_groups: 2, max_percent: 100, window_minutes: 60 });
    for id in ["a", "b", "c", "d"] {
        engine.apply_event(&group(id, [], []), 0).unwrap();
    }
    drain(&mut engine);
    engine.apply_event(&removed("a", true), 0).unwrap();
    assert!(drain(&mut engine).is_empty(), "deleted before the cycle ended");
    engine.apply_event(&round_completed(), 0).unwrap();
    assert_eq!(drain(&mut engine), vec![("delete".to_string(), 0)]);
    for id in ["b", "c", "d"] {
        engine.apply_event(&removed(id, true), 0).unwrap();
    }
    engine.apply_event(&round_completed(), 0).unwrap();
    assert!(drain(&mut engine).is_empty(), "3 deletions > 2 must be held");
    assert_eq!(engine.decide_held(&["c".into()], true, &at(0)).unwrap().0.deletions, 1);
    assert_eq!(drain(&mut engine), vec![("delete".to_string(), 0)]);
    assert_eq!(engine.decide_held(&[], false, &at(0)).unwrap().0.deletions, 2);
    assert!(drain(&mut engine).is_empty());
}

/// A tenant's mass deletion seen over several fast rounds is one mass deletion.
#[test]
fn the_threshold_counts_every_deletion_of_its_window_and_holds_later_ones_with_the_held() {
    const MINUTE: i64 = 60_000;
    let mut engine = engine(DeletionThreshold { max_groups: 3, max_percent: 100, window_minutes: 60 });
    for n in 0..12 {
        engine.apply_event(&group(&format!("g{n}"), [], []), 0).unwrap();
    }
    drain(&mut engine);
    let delete_in_round = |engine: &mut TestEngine, ids: &[&str], at: i64| {
        for id in ids {
            engine.apply_event(&removed(id, true), at).unwrap();
        }
        engine.apply_event(&round_completed(), at).unwrap();
        drain(engine).iter().filter(|(kind, _)| kind == "delete").count()
    };
    assert_eq!(delete_in_round(&mut engine, &["g0", "g1"], MINUTE), 2);
    // 2 sent + 2 now = 4 > 3 within the hour: held, though each round alone passes.
    assert_eq!(delete_in_round(&mut engine, &["g2", "g3"], 2 * MINUTE), 0);
    // While those wait for an operator, a single later deletion waits with them.
    assert_eq!(delete_in_round(&mut engine, &["g4"], 3 * MINUTE), 0);
    assert_eq!(engine.decide_held(&[], false, &at(4 * MINUTE)).unwrap().0.deletions, 3);
    // Discarded, and the first two have left the window: small deletions go again.
    assert_eq!(delete_in_round(&mut engine, &["g5", "g6"], 62 * MINUTE), 2);
}

#[test]
fn a_group_restored_before_its_cycle_ends_is_not_deleted() {
    let mut engine = engine(DeletionThreshold::default());
    engine.apply_event(&group("a", [], []), 0).unwrap();
    drain(&mut engine);
    engine.apply_event(&removed("a", false), 0).unwrap();
    engine.apply_event(&group("a", [], []), 0).unwrap();
    engine.apply_event(&round_completed(), 0).unwrap();
    assert!(drain(&mut engine).iter().all(|(kind, _)| kind != "delete"));
}

#[test]
fn only_a_complete_full_round_sweeps() {
    let mut engine = engine(DeletionThreshold { max_groups: 100, max_percent: 100, window_minutes: 60 });
    engine.apply_event(&user(1), 0).unwrap();
    engine.apply_event(&group("keep", [1], []), 0).unwrap();
    engine.apply_event(&group("gone", [1], []), 0).unwrap();
    drain(&mut engine);
    let boundary = RoundBoundary { resource: Resource::Groups, full: true };
    let in_round = |change| ChangeEvent { round_id: "full-1".into(), ..event(change) };
    engine.apply_event(&in_round(Change::RoundStarted(boundary)), 0).unwrap();
    let mut seen = group("keep", [], []);
    seen.round_id = "full-1".into();
    engine.apply_event(&seen, 0).unwrap();
    // A completion for another round (its start never seen) sweeps nothing.
    let mut other = event(Change::RoundCompleted(boundary));
    other.round_id = "full-0".into();
    engine.apply_event(&other, 0).unwrap();
    assert!(drain(&mut engine).is_empty());
    engine.apply_event(&in_round(Change::RoundCompleted(boundary)), 0).unwrap();
    // "gone" vanished (soft-delete policy: keep) and "keep" lost its member, which
    // the full round no longer listed.
    assert_eq!(drain(&mut engine), vec![("remove_members".to_string(), 1)]);
    assert_eq!(engine.state("gone"), Some(WritebackState::Kept));
}

#[test]
fn switched_off_plans_nothing_and_preview_changes_nothing() {
    let mut engine = engine(DeletionThreshold::default());
    engine.set_writeback(false, false, &at(0)).unwrap();
    engine.apply_event(&user(1), 0).unwrap();
    engine.apply_event(&group("g", [1], []), 0).unwrap();
    assert!(drain(&mut engine).is_empty());
    let preview = engine.preview("g", &at(0)).unwrap().unwrap();
    let kinds: Vec<&str> = preview.commands.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["upsert", "add_members"]);
    assert_eq!(preview.members_to_write, 1);
    assert!(drain(&mut engine).is_empty(), "preview left commands behind");
    assert_eq!(engine.store().count_rows("planned_members", "1"), 0, "preview left planned state behind");
}

#[test]
fn a_batch_keeps_the_events_before_a_failure_and_leaves_the_rest_for_redelivery() {
    let mut engine = engine(DeletionThreshold::default());
    let broken = without_id(user(3));
    let batch: Vec<Incoming> = [user(1), user(2), broken, user(4)]
        .into_iter()
        .map(|event| Incoming { event, span: tracing::Span::none(), trace: String::new() })
        .collect();
    let applied = engine.apply_events(&batch, 0);
    assert_eq!(applied.events, 2);
    assert!(matches!(applied.failure, Some(EngineError::Invalid(_))));
    let known =
        |engine: &TestEngine, id: &str| -> bool { engine.store().count_rows("users", &format!("id = '{id}'")) == 1 };
    assert!(known(&engine, "u1") && known(&engine, "u2"));
    assert!(!known(&engine, "u4"), "an event after the failure was applied out of order");
    assert_eq!(
        engine.store().count_rows("processed_events", "1"),
        2,
        "the failed event must not be recorded as processed"
    );
    // Redelivered (with the failing one fixed), everything lands once.
    let applied = engine.apply_events(&batch[..2], 0);
    assert_eq!((applied.events, applied.failure.is_none()), (2, true));
    assert_eq!(engine.store().count_rows("processed_events", "1"), 2);
}

#[test]
fn the_status_counters_follow_every_membership_and_user_change() {
    let mut engine = engine(DeletionThreshold::default());
    let check = |engine: &TestEngine| {
        let store = engine.store();
        let memberships = store.count_rows("memberships", "1") as i64;
        let users = store.count_rows("users", "deleted = 0") as i64;
        assert_eq!((store.counter(Counter::Memberships), store.counter(Counter::Users)), (memberships, users));
        (memberships, users)
    };
    for n in 0..10 {
        engine.apply_event(&user(n), 0).unwrap();
    }
    engine.apply_event(&user(3), 0).unwrap();
    engine.apply_event(&group("g1", 0..6, []), 0).unwrap();
    engine.apply_event(&group("g2", 4..10, []), 0).unwrap();
    engine.apply_event(&group("g1", 0..3, [5]), 0).unwrap();
    assert_eq!(check(&engine), (11, 10));
    let gone = event(Change::UserRemoved(ObjectRemoved { id: "u7".into(), reason: RemovalReason::Deleted }));
    engine.apply_event(&gone, 0).unwrap();
    engine.apply_event(&removed("g2", true), 0).unwrap();
    assert_eq!(check(&engine), (5, 9));
    engine.apply_event(&user(7), 0).unwrap();
    assert_eq!(check(&engine), (5, 10));
}

/// Links under the ids' numbers: a link listed twice counts once and keeps its last
/// kind, links seen before are updated (not counted), and members read back as they
/// were planned, an id never numbered as nothing.
#[test]
fn links_are_counted_once_and_read_back_under_their_numbers() {
    let mut engine = engine(DeletionThreshold::default());
    for n in 1..=3 {
        engine.apply_event(&user(n), 0).unwrap();
    }
    let link = |id: &str, kind| MemberLink { id: id.into(), kind };
    let mut slice = group("g", [], []);
    if let Change::Group(g) = &mut slice.change {
        g.members_added = vec![
            link("U1", MemberKind::Device),
            link("u2", MemberKind::User),
            link("u1", MemberKind::User),
            link("dev", MemberKind::Device),
        ];
    }
    engine.apply_event(&slice, 0).unwrap();
    assert_eq!(engine.store().counter(Counter::Memberships), 3, "u1 is one link");
    let kinds = engine.store().count_rows("memberships", "member_kind = 'user'");
    assert_eq!(kinds, 2, "u1 keeps its last kind");
    let commands = drain(&mut engine);
    assert_eq!(commands, vec![("upsert".to_string(), 0), ("add_members".to_string(), 2)]);
    // The same links again (a replay under a new id), and one more: only that one counts.
    let mut again = group("g", [3], []);
    if let Change::Group(g) = &mut again.change {
        g.members_added.extend([link("u2", MemberKind::User), link("dev", MemberKind::Device)]);
    }
    engine.apply_event(&again, 0).unwrap();
    assert_eq!(engine.store().counter(Counter::Memberships), 4);
    assert_eq!(drain(&mut engine), vec![("add_members".to_string(), 1)]);
    let tx = engine.store.transaction().unwrap();
    let known = |group: &str, member: &str| tx.known_member(group, member).unwrap();
    assert_eq!(known("g", "u3").planned, Some(MemberRef::Sid(format!("{SID}1003"))));
    let nobody = known("g", "nobody");
    assert_eq!((nobody.kind, nobody.user.is_none(), nobody.planned), (None, true, None), "never numbered");
    let device = known("g", "dev");
    assert_eq!(device.kind, Some(MemberKind::Device));
    assert!(device.skipped.is_some() && device.planned.is_none());
    assert_eq!(known("g", "u1").planned, Some(MemberRef::Sid(format!("{SID}1001"))));
    let elsewhere = known("never-seen", "u1");
    assert_eq!((elsewhere.kind, elsewhere.planned), (None, None), "a group without a number has no links");
    assert!(elsewhere.user.is_some(), "the user is still known by its id");
    assert!(tx.known_members_of("never-seen").unwrap().is_empty());
    assert_eq!(tx.planned_member_count("g").unwrap(), 3);
}

/// A writer's outcome for `group`; the AD objectGUID is derived from the group id.
fn outcome(group: &str, kind: &str, status: cmd::OutcomeStatus) -> cmd::Outcome {
    cmd::Outcome {
        command_id: uuid::Uuid::new_v4().to_string(),
        group_id: group.into(),
        kind: kind.into(),
        status: status as i32,
        sequence: 1_000,
        group: Some(cmd::AppliedGroup {
            dn: format!("CN={group},OU=G,DC=lab"),
            object_guid: format!("0000000{}-0000-0000-0000-000000000000", group.len()),
            object_sid: "S-1-5-21-1-2-3-9000".into(),
            sam_account_name: group.into(),
        }),
        ..Default::default()
    }
}

#[test]
fn a_call_returns_what_it_committed_and_a_failed_batch_only_its_applied_part() {
    let mut engine = engine(DeletionThreshold::default());
    engine.apply_event(&user(1), 0).unwrap();
    let incoming =
        |event: ChangeEvent| Incoming { event, span: tracing::Span::none(), trace: "{\"traceparent\":\"t\"}".into() };
    let broken = without_id(user(9));
    let applied = engine.apply_events(&[incoming(group("g1", [1], [])), incoming(broken)], 0);
    assert_eq!(applied.events, 1);
    let kinds: Vec<&str> = applied.planned.commands.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["upsert", "add_members"], "the rolled-back attempt must not be counted twice");
    let rows = engine.outbox_batch(100).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].headers.get("traceparent").map(String::as_str), Some("t"), "the event's trace is carried");
    // A preview of a group already in step plans nothing and leaves the outbox alone.
    let preview = engine.preview("g1", &at(0)).unwrap().unwrap();
    assert!(preview.commands.is_empty(), "nothing changed since: {:?}", preview.commands);
    assert_eq!(engine.outbox_batch(100).unwrap().len(), 2);
}

#[test]
fn outcomes_record_the_ad_object_and_nested_groups_follow_it() {
    let mut engine = engine(DeletionThreshold::default());
    let nested = event(Change::Group(GroupObserved {
        id: "parent".into(),
        display_name: Some("PARENT".into()),
        security_enabled: Some(true),
        mail_enabled: Some(false),
        members_added: vec![MemberLink { id: "child".into(), kind: MemberKind::Group }],
        ..Default::default()
    }));
    engine.apply_event(&group("child", [], []), 0).unwrap();
    engine.apply_event(&nested, 0).unwrap();
    assert_eq!(drain(&mut engine), vec![("upsert".to_string(), 0), ("upsert".to_string(), 0)]);
    assert_eq!(engine.state("child"), Some(WritebackState::Pending));
    let planned = engine.apply_outcome(&outcome("child", "upsert", cmd::OutcomeStatus::Applied), &at(1));
    assert_eq!(engine.state("child"), Some(WritebackState::Written));
    // The child now has an objectGUID: the parent references it by that.
    assert_eq!(planned.unwrap().commands.len(), 1);
    assert_eq!(drain(&mut engine), vec![("add_members".to_string(), 1)]);
    let detail = engine.store().group_detail("parent").unwrap().unwrap();
    assert_eq!(detail.members_written, ["guid:00000005-0000-0000-0000-000000000000"]);
    assert_eq!(engine.store().group_detail("child").unwrap().unwrap().ad_object_sid, "S-1-5-21-1-2-3-9000");
}

#[test]
fn a_failure_keeps_its_cause_and_a_refused_member_is_skipped() {
    let mut engine = engine(DeletionThreshold::default());
    engine.apply_event(&user(1), 0).unwrap();
    engine.apply_event(&group("g", [1], []), 0).unwrap();
    drain(&mut engine);
    let mut failed = outcome("g", "upsert", cmd::OutcomeStatus::Failed);
    failed.message = "no such parent".into();
    engine.apply_outcome(&failed, &at(1)).unwrap();
    let mut later = outcome("g", "add_members", cmd::OutcomeStatus::Failed);
    later.message = "no group carries the anchor".into();
    engine.apply_outcome(&later, &at(2)).unwrap();
    assert_eq!(engine.state("g"), Some(WritebackState::Error));
    let summary = engine.store().group_detail("g").unwrap().unwrap().summary;
    assert!(summary.last_error.contains("no such parent"), "{}", summary.last_error);
    let status = engine.store().status().unwrap();
    assert_eq!(status.recent_errors.len(), 2);
    assert_eq!(status.commands_in_flight, 2, "the outcomes named other commands");

    engine.apply_outcome(&outcome("g", "upsert", cmd::OutcomeStatus::Applied), &at(3)).unwrap();
    assert_eq!(engine.state("g"), Some(WritebackState::Written));
    let mut refused = outcome("g", "add_members", cmd::OutcomeStatus::Applied);
    refused.members_rejected = vec![cmd::RejectedMember {
        member: Some(cmd::MemberRef::from(&MemberRef::Sid(format!("{SID}1001")))),
        reason: "no such object".into(),
    }];
    engine.apply_outcome(&refused, &at(4)).unwrap();
    let detail = engine.store().group_detail("g").unwrap().unwrap();
    assert!(detail.members_written.is_empty());
    assert_eq!(detail.members_skipped.len(), 1);
    assert_eq!(detail.members_skipped[0].reason, "AD refused the member: no such object");
    let audit = engine.store().audit_log("g", 100).unwrap();
    assert_eq!(audit[0].result, "applied");
    assert!(audit.iter().any(|entry| entry.result == "failed"));
}

/// The writer's refusals are read value by value: one that is not a SID or GUID is
/// logged and left out, and the rest of the outcome still counts.
#[test]
fn a_malformed_refused_member_is_ignored_and_the_rest_of_the_outcome_recorded() {
    let mut engine = engine(DeletionThreshold::default());
    for n in [1, 2] {
        engine.apply_event(&user(n), 0).unwrap();
    }
    engine.apply_event(&group("g", [1, 2], []), 0).unwrap();
    drain(&mut engine);
    let mut applied = outcome("g", "upsert", cmd::OutcomeStatus::Applied);
    applied.members_rejected = vec![
        cmd::RejectedMember {
            member: Some(cmd::MemberRef { reference: Some(cmd::member_ref::Reference::Sid("S-1-5>;<x".into())) }),
            reason: "hostile".into(),
        },
        cmd::RejectedMember { member: None, reason: "empty".into() },
        cmd::RejectedMember {
            member: Some(cmd::MemberRef::from(&MemberRef::Sid(format!("{SID}1002")))),
            reason: "no such object".into(),
        },
    ];
    engine.apply_outcome(&applied, &at(1)).unwrap();
    assert_eq!(engine.state("g"), Some(WritebackState::Written));
    let detail = engine.store().group_detail("g").unwrap().unwrap();
    assert_eq!(detail.ad_object_sid, "S-1-5-21-1-2-3-9000");
    assert_eq!(detail.members_written, [format!("sid:{SID}1001")]);
    assert_eq!(detail.members_skipped.len(), 1);
    assert_eq!(
        (detail.members_skipped[0].member_id.as_str(), detail.members_skipped[0].reason.as_str()),
        ("u2", "AD refused the member: no such object")
    );
    let audit = engine.store().audit_log("g", 1).unwrap();
    assert!(audit[0].detail.ends_with("refused 3"), "{}", audit[0].detail);
}

#[test]
fn a_changed_spec_sends_one_upsert_and_a_group_from_before_fingerprints_at_most_one() {
    let mut engine = engine(DeletionThreshold::default());
    engine.apply_event(&group("g", [], []), 0).unwrap();
    drain(&mut engine);
    engine.apply_event(&group("g", [], []), 0).unwrap();
    assert!(drain(&mut engine).is_empty(), "same spec, nothing to send");
    let described = || {
        let mut described = group("g", [], []);
        if let Change::Group(g) = &mut described.change {
            g.description = Some("now described".into());
        }
        described
    };
    engine.apply_event(&described(), 0).unwrap();
    assert_eq!(drain(&mut engine), vec![("upsert".to_string(), 0)]);
    // Upgraded from a version that stored the spec's Debug text: one upsert, once.
    engine.store().forget_fingerprints();
    engine.apply_event(&described(), 0).unwrap();
    assert_eq!(drain(&mut engine), vec![("upsert".to_string(), 0)]);
    engine.apply_event(&described(), 0).unwrap();
    assert!(drain(&mut engine).is_empty());
}

#[test]
fn disabling_with_keep_freezes_every_owned_group_and_the_status_says_so() {
    let mut engine = engine(DeletionThreshold::default());
    for id in ["a", "b"] {
        engine.apply_event(&group(id, [], []), 0).unwrap();
    }
    let skipped = event(Change::Group(GroupObserved {
        id: "synced".into(),
        on_premises_sync_enabled: Some(true),
        security_enabled: Some(true),
        ..Default::default()
    }));
    engine.apply_event(&skipped, 0).unwrap();
    drain(&mut engine);
    let planned = engine.set_writeback(false, false, &at(5)).unwrap();
    assert!(planned.commands.is_empty());
    let status = engine.store().status().unwrap();
    assert!(!status.writeback_enabled);
    assert_eq!(status.last_disable_mode.as_deref(), Some("keep"));
    assert_eq!(status.groups_by_state, vec![("kept".to_string(), 2), ("skipped".to_string(), 1)]);
    let listed = engine.store().list_groups("", "kept", 10).unwrap();
    assert_eq!(listed.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(engine.store().list_groups("a", "", 10).unwrap().len(), 2, "paged after a");
}

/// The planner's share of `scripts/bench.sh pipeline-throughput`, in-process: a
/// tenant of `GWB_INGEST_GROUPS` groups (default 1000) of 1,000 members drawn from
/// 100 users per group, delivered as the collector publishes it (users first, then
/// each group in two 500-member slices, in batches of 256 events), on a store file,
/// then the outbox drained and each command's dry-run outcome recorded. Prints the
/// planner time per membership. Run with
/// `cargo test --release -p gwb-planner -- --ignored --nocapture ingest_cost`;
/// under callgrind for instruction counts.
#[test]
#[ignore = "a measurement, not a check: run it on purpose"]
fn ingest_cost() {
    let groups: u32 = std::env::var("GWB_INGEST_GROUPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let (users, members_per_group, slice) = (groups * 100, 1000u32, 500u32);
    let dir = std::env::temp_dir().join(format!("gwb-ingest-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut engine = engine(DeletionThreshold::default());
    engine.store = SqliteStore::open(&dir.join("planner.db")).unwrap();
    engine.set_writeback(true, false, &at(0)).unwrap();
    let guid = |kind: u32, n: u32| format!("{kind:08x}-0000-4000-8000-{n:012x}");
    let mut events = Vec::new();
    for n in 0..users {
        events.push(event(Change::User(UserObserved {
            id: guid(1, n),
            on_premises_security_identifier: Some(format!("{SID}{}", 1000 + n)),
            on_premises_sync_enabled: Some(true),
            ..Default::default()
        })));
    }
    // A fixed LCG: the same tenant every run.
    let mut seed: u64 = 8;
    for g in 0..groups {
        let mut chosen = std::collections::BTreeSet::new();
        while chosen.len() < members_per_group as usize {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            chosen.insert(((seed >> 33) % u64::from(users)) as u32);
        }
        let chosen: Vec<u32> = chosen.into_iter().collect();
        for part in chosen.chunks(slice as usize) {
            events.push(event(Change::Group(GroupObserved {
                id: guid(2, g),
                display_name: Some(format!("tp-{g}")),
                security_enabled: Some(true),
                mail_enabled: Some(false),
                members_added: part.iter().map(|&n| MemberLink { id: guid(1, n), kind: MemberKind::User }).collect(),
                ..Default::default()
            })));
        }
    }
    let started = std::time::Instant::now();
    let mut commands = 0usize;
    for batch in events.chunks(256) {
        let incoming: Vec<Incoming> = batch
            .iter()
            .map(|event| Incoming { event: event.clone(), span: tracing::Span::none(), trace: String::new() })
            .collect();
        let applied = engine.apply_events(&incoming, 1);
        assert!(applied.failure.is_none());
        commands += applied.planned.commands.len();
    }
    let ingested = started.elapsed();
    loop {
        let rows = engine.outbox_batch(1000).unwrap();
        let Some(last) = rows.last() else { break };
        engine.outbox_published(last.seq).unwrap();
        for row in &rows {
            // As the writer's outcome would carry it; validating the command is the
            // writer's work, not the planner's, so it is not measured here.
            let wire = cmd::WriteCommand::decode(row.payload.as_slice()).unwrap();
            let kind = CommandKind::from(wire.action.as_ref().unwrap());
            let mut dry_run = outcome(&wire.group_id, kind.as_str(), cmd::OutcomeStatus::DryRun);
            dry_run.command_id = wire.command_id;
            dry_run.sequence = wire.sequence;
            dry_run.group = None;
            engine.apply_outcome(&dry_run, &at(2)).unwrap();
        }
    }
    let total = started.elapsed();
    let memberships = u64::from(groups * members_per_group);
    assert_eq!(engine.store().status().unwrap().memberships_known, memberships);
    assert_eq!(engine.store().status().unwrap().commands_in_flight, 0);
    println!(
        "ingest_cost: {memberships} memberships, {commands} commands; ingest {:.2} s, total {:.2} s: {:.2} µs per membership",
        ingested.as_secs_f64(),
        total.as_secs_f64(),
        total.as_secs_f64() * 1e6 / memberships as f64
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// F2: a soft-deleted synced user (`@removed: changed`, e.g. moved out of the sync
/// scope on the AD side) keeps its memberships by default until it is permanently
/// deleted; `on_user_soft_delete = "remove"` removes it at once. Failed before: every
/// `@removed` user was removed from its groups.
#[test]
fn a_soft_deleted_user_stays_a_member_until_permanently_deleted() {
    let user_removed = |hard: bool| {
        let reason = if hard { RemovalReason::Deleted } else { RemovalReason::Changed };
        event(Change::UserRemoved(ObjectRemoved { id: "u2".into(), reason }))
    };
    let apply = |engine: &mut TestEngine, event: ChangeEvent| {
        let applied = engine.apply_events(&[Incoming { event, span: tracing::Span::none(), trace: String::new() }], 0);
        assert!(applied.failure.is_none());
        applied.planned.commands.into_iter().map(|(kind, _)| kind).collect::<Vec<_>>()
    };
    let planned = |engine: &mut TestEngine| engine.store.transaction().unwrap().planned_member_count("g").unwrap();
    for (policy, removed_on_soft_delete) in [(UserSoftDelete::Keep, false), (UserSoftDelete::Remove, true)] {
        let mut engine = engine(DeletionThreshold::default());
        engine.policy.on_user_soft_delete = policy;
        for n in 1..=2 {
            engine.apply_event(&user(n), 0).unwrap();
        }
        engine.apply_event(&group("g", 1..=2, []), 0).unwrap();
        assert_eq!(planned(&mut engine), 2);

        let soft = apply(&mut engine, user_removed(false));
        if removed_on_soft_delete {
            assert_eq!(soft, [CommandKind::RemoveMembers], "{policy:?}");
            assert_eq!(planned(&mut engine), 1);
            continue;
        }
        assert!(soft.is_empty(), "{policy:?}: nothing is sent for a soft delete, got {soft:?}");
        assert_eq!(planned(&mut engine), 2, "the soft-deleted user is still a member");
        assert_eq!(engine.store().status().unwrap().users_known, 2);
        let hard = apply(&mut engine, user_removed(true));
        assert_eq!(hard, [CommandKind::RemoveMembers], "a permanent deletion removes it");
        assert_eq!(planned(&mut engine), 1);
    }
}

fn m365(id: &str) -> ChangeEvent {
    event(Change::Group(GroupObserved {
        id: id.into(),
        display_name: Some("Team".into()),
        mail_nickname: Some("team".into()),
        mail: Some("team@contoso.com".into()),
        mail_enabled: Some(true),
        security_enabled: Some(false),
        group_types: vec!["Unified".into()],
        proxy_addresses: vec!["SMTP:team@contoso.com".into()],
        writeback: Some(gwb_core::event::WritebackConfiguration {
            is_enabled: Some(true),
            on_premises_group_type: None,
        }),
        ..Default::default()
    }))
}

fn writer_status(allowed: bool, refusal: &str) -> cmd::WriterStatus {
    cmd::WriterStatus {
        writer_id: "w1".into(),
        directory_connected: true,
        has_exchange_schema: true,
        exchange: Some(cmd::ExchangeStatus {
            description: if allowed {
                "Exchange 2019 CU10+ schema, organisation LabOrg (objectVersion 16759, no Exchange servers)".into()
            } else {
                "Exchange 2019 CU10+ schema only, no organisation".into()
            },
            m365_writeback_allowed: allowed,
            m365_writeback_refusal: refusal.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A writer that refuses mail-enabled groups (a schema-only forest) makes the planner
/// skip Microsoft 365 groups with its reason, sending nothing; once a writer accepts
/// them, they are written.
#[test]
fn microsoft_365_groups_follow_the_writers_exchange_verdict() {
    const REFUSAL: &str = "the forest has the Exchange 2019 CU10+ schema only, no Exchange organisation";
    let mut engine = engine(DeletionThreshold::default());
    engine.apply_writer_status(&writer_status(false, REFUSAL), &at(0)).unwrap();
    engine.apply_event(&m365("team"), 0).unwrap();
    assert!(drain(&mut engine).is_empty(), "a command the writer would refuse was sent");
    assert_eq!(engine.state("team"), Some(WritebackState::Skipped));
    let detail = engine.store().group_detail("team").unwrap().unwrap();
    assert!(detail.policy_reason.contains(REFUSAL), "{}", detail.policy_reason);
    let status = engine.store().status().unwrap();
    assert_eq!(status.exchange, "Exchange 2019 CU10+ schema only, no organisation");
    assert_eq!(status.mail_refusal, REFUSAL);
    assert_eq!(engine.store().mail_refusal().unwrap().as_deref(), Some(REFUSAL));

    engine.apply_writer_status(&writer_status(true, ""), &at(1)).unwrap();
    assert_eq!(drain(&mut engine), vec![("upsert".to_string(), 0)]);
    assert_eq!(engine.state("team"), Some(WritebackState::Pending));
    assert_eq!(engine.store().mail_refusal().unwrap(), None);
    // The same verdict again re-decides nothing.
    engine.apply_writer_status(&writer_status(true, ""), &at(2)).unwrap();
    assert!(drain(&mut engine).is_empty());
}

/// Addresses the writer left out are kept on the group (and audited) until a write
/// reports none.
#[test]
fn skipped_proxy_addresses_are_kept_on_the_group() {
    let mut engine = engine(DeletionThreshold::default());
    engine.apply_writer_status(&writer_status(true, ""), &at(0)).unwrap();
    engine.apply_event(&m365("team"), 0).unwrap();
    drain(&mut engine);
    let mut applied = outcome("team", "upsert", cmd::OutcomeStatus::Applied);
    applied.addresses_skipped = vec![cmd::SkippedAddress {
        address: "smtp:sales@contoso.com".into(),
        holder_dn: "CN=Sales DL,OU=Mail,DC=lab".into(),
    }];
    engine.apply_outcome(&applied, &at(1)).unwrap();
    let detail = engine.store().group_detail("team").unwrap().unwrap();
    assert_eq!(detail.addresses_skipped, ["smtp:sales@contoso.com (held by CN=Sales DL,OU=Mail,DC=lab)"]);
    let audit = engine.store().audit_log("team", 1).unwrap();
    assert!(audit[0].detail.contains("proxy addresses not written: smtp:sales@contoso.com"), "{:?}", audit[0]);
    let mut later = outcome("team", "upsert", cmd::OutcomeStatus::Applied);
    later.sequence = 1_001;
    engine.apply_outcome(&later, &at(2)).unwrap();
    assert!(engine.store().group_detail("team").unwrap().unwrap().addresses_skipped.is_empty());
}

/// Values planned for the group, and the member removals held for it.
fn members_and_held(engine: &mut TestEngine, group_id: &str) -> (u64, u64) {
    let tx = engine.store.transaction().unwrap();
    (tx.planned_member_count(group_id).unwrap(), tx.held_member_removal_count(group_id).unwrap())
}

/// #14 item 3: a cloud change that would take more than `max_member_removals` values
/// from one group is held: AD keeps the members until an operator approves (the
/// removals are sent) or discards (they stay). Later removals wait with the held ones;
/// a held member added again is no longer to be removed. Failed before: every removal
/// was sent at once.
#[test]
fn a_mass_member_removal_is_held_until_an_operator_decides() {
    let mut engine = engine(DeletionThreshold::default());
    for n in 0..300 {
        engine.apply_event(&user(n), 0).unwrap();
    }
    engine.apply_event(&group("g", 0..300, []), 0).unwrap();
    drain(&mut engine);

    // 101 of 300 (34 %): over the count limit of 100, under 50 %.
    engine.apply_event(&group("g", [], 0..101), 1).unwrap();
    assert!(drain(&mut engine).is_empty(), "101 removals must be held");
    assert_eq!(members_and_held(&mut engine, "g"), (199, 101));
    let held = engine.store().held_member_removals().unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].group_id.as_str(), held[0].count), ("g", 101));
    assert!(held[0].reason.contains("101 member removals within 60 minutes exceed the threshold of 100"), "{held:?}");
    assert_eq!(engine.store().status().unwrap().held_member_removals, 101);
    assert_eq!(engine.store().gauges().unwrap().held_member_removals, 101);
    let audit = engine.store().audit_log("g", 10).unwrap();
    assert_eq!((audit[0].kind.as_str(), audit[0].result.as_str()), ("remove_members", "held"), "{audit:?}");

    // One more removal waits with them; a held member back in the group is added
    // (AD still holds it) and leaves the held list.
    engine.apply_event(&group("g", [], [150]), 2).unwrap();
    assert!(drain(&mut engine).is_empty());
    engine.apply_event(&group("g", [0], []), 3).unwrap();
    assert_eq!(drain(&mut engine), vec![("add_members".to_string(), 1)]);
    assert_eq!(members_and_held(&mut engine, "g"), (199, 101));

    let (decided, planned) = engine.decide_held(&["G".into()], true, &at(4)).unwrap();
    assert_eq!((decided.deletions, decided.member_removals), (0, 101));
    assert_eq!(planned.commands.len(), 1);
    assert_eq!(drain(&mut engine), vec![("remove_members".to_string(), 101)]);
    assert_eq!(members_and_held(&mut engine, "g"), (199, 0));
    assert!(engine.store().held_member_removals().unwrap().is_empty());
}

/// The percentage rule applies to groups of 20 members or more; a discard leaves the
/// members in AD, no longer managed, and the next removal is judged afresh.
#[test]
fn more_than_half_of_a_group_is_held_and_a_discard_keeps_the_members() {
    let mut engine = engine(DeletionThreshold::default());
    for n in 0..40 {
        engine.apply_event(&user(n), 0).unwrap();
    }
    engine.apply_event(&group("big", 0..30, []), 0).unwrap();
    engine.apply_event(&group("small", 30..40, []), 0).unwrap();
    drain(&mut engine);

    engine.apply_event(&group("small", [], 30..39), 1).unwrap();
    assert_eq!(drain(&mut engine), vec![("remove_members".to_string(), 9)], "9 of 10: a small group");
    engine.apply_event(&group("big", [], 0..16), 1).unwrap();
    assert!(drain(&mut engine).is_empty(), "16 of 30 members are more than 50 %");
    let held = engine.store().held_member_removals().unwrap();
    assert!(held[0].reason.contains("more than 50 % of the group's 30 members"), "{held:?}");

    let (decided, _) = engine.decide_held(&[], false, &at(2)).unwrap();
    assert_eq!(decided.member_removals, 16);
    assert!(drain(&mut engine).is_empty(), "discarded: nothing is removed");
    assert_eq!(members_and_held(&mut engine, "big"), (14, 0));
    let audit = engine.store().audit_log("big", 1).unwrap();
    assert_eq!(audit[0].result, "discarded");
    engine.apply_event(&group("big", [], [20]), 3).unwrap();
    assert_eq!(drain(&mut engine), vec![("remove_members".to_string(), 1)]);
}

/// Removals sent without an operator count within the deletion window, so a mass
/// removal seen in slices is still one mass removal; after the window they no
/// longer count. A changed value (the same member, a new SID) is no removal.
#[test]
fn member_removals_count_over_the_window_and_replaced_values_do_not_count() {
    const MINUTE: i64 = 60_000;
    let mut engine = engine(DeletionThreshold::default());
    for n in 0..400 {
        engine.apply_event(&user(n), 0).unwrap();
    }
    engine.apply_event(&group("g", 0..400, []), 0).unwrap();
    drain(&mut engine);

    engine.apply_event(&group("g", [], 0..60), 0).unwrap();
    assert_eq!(drain(&mut engine), vec![("remove_members".to_string(), 60)]);
    engine.apply_event(&group("g", [], 60..110), 10 * MINUTE).unwrap();
    assert!(drain(&mut engine).is_empty(), "60 + 50 within the hour exceed 100");
    let held = engine.store().held_member_removals().unwrap();
    assert!(held[0].reason.contains("(60 of them already sent)"), "{held:?}");
    engine.decide_held(&[], true, &at(11 * MINUTE)).unwrap();
    assert_eq!(drain(&mut engine), vec![("remove_members".to_string(), 50)]);

    // Approved removals were the operator's: they do not count. 61 minutes after the
    // first slice, only what was sent without an operator in the last hour counts.
    engine.apply_event(&group("g", [], 110..190), 61 * MINUTE).unwrap();
    assert_eq!(drain(&mut engine), vec![("remove_members".to_string(), 80)]);

    // 150 users get a new SID: 150 values replaced, no member lost.
    engine.policy.member_removals.max_members = 0;
    for n in 200..350 {
        let mut changed = user(n);
        if let Change::User(user) = &mut changed.change {
            user.on_premises_security_identifier = Some(format!("{SID}{}", 9000 + n));
        }
        engine.apply_event(&changed, 62 * MINUTE).unwrap();
    }
    let sent = drain(&mut engine);
    assert_eq!(sent.iter().filter(|(kind, _)| kind == "remove_members").count(), 150, "{sent:?}");
    assert_eq!(members_and_held(&mut engine, "g"), (210, 0));
}

/// F3: a group converted from AD (not synced, still carrying its AD group's SID) is
/// sent with that SID; when the writer refuses it (the original exists and may not be
/// adopted), it is skipped with the writer's reason, the member commands sent before
/// it fail without turning it into an error, and a later change plans every member
/// again. Failed before: the spec carried no SID and a refusal was a failure.
#[test]
fn a_converted_group_refused_by_the_writer_is_skipped_with_its_reason() {
    let mut engine = engine(DeletionThreshold::default());
    engine.apply_event(&user(1), 0).unwrap();
    let converted = |description: &str| {
        event(Change::Group(GroupObserved {
            id: "g".into(),
            display_name: Some("Finance".into()),
            description: Some(description.into()),
            security_enabled: Some(true),
            mail_enabled: Some(false),
            on_premises_sync_enabled: None,
            on_premises_security_identifier: Some(format!("{SID}7777")),
            members_added: vec![MemberLink { id: "u1".into(), kind: MemberKind::User }],
            ..Default::default()
        }))
    };
    engine.apply_event(&converted("one"), 0).unwrap();
    let rows = engine.outbox_batch(10).unwrap();
    let (_, first) = command_of(&rows[0].payload);
    let WriteCommand::Upsert(spec) = first else { panic!("an upsert first, got {first:?}") };
    assert_eq!(spec.on_premises_sid.as_deref(), Some("S-1-5-21-1-2-3-7777"));
    assert_eq!(drain(&mut engine), vec![("upsert".to_string(), 0), ("add_members".to_string(), 1)]);

    let reason = "AD group S-1-5-21-1-2-3-7777 exists: CN=Finance,OU=Legacy,DC=lab; …";
    let refused = cmd::Outcome { message: reason.into(), ..outcome("g", "upsert", cmd::OutcomeStatus::Refused) };
    engine.apply_outcome(&refused, &at(1)).unwrap();
    let failed = cmd::Outcome {
        sequence: 1_001,
        message: "no group carries anchor Group_g".into(),
        ..outcome("g", "add_members", cmd::OutcomeStatus::Failed)
    };
    engine.apply_outcome(&failed, &at(2)).unwrap();
    assert_eq!(engine.state("g"), Some(WritebackState::Skipped));
    let summary = engine.store().list_groups("", "skipped", 10).unwrap();
    assert_eq!(summary.len(), 1);
    let detail = engine.store().group_detail("g").unwrap().unwrap();
    assert_eq!(detail.policy_reason, reason);
    assert_eq!(engine.store().audit_log("g", 2).unwrap()[1].result, "refused");

    engine.apply_event(&converted("two"), 3).unwrap();
    assert_eq!(drain(&mut engine), vec![("upsert".to_string(), 0), ("add_members".to_string(), 1)]);
}

/// #15 item 8: a CN clash the writer reports shows on the group (detail, audit entry,
/// gauge) until a later write no longer reports it. Failed before: it reached only the
/// writer's log.
#[test]
fn a_name_clash_shows_on_the_group_until_it_is_over() {
    let mut engine = engine(DeletionThreshold::default());
    engine.apply_event(&group("g", [], []), 0).unwrap();
    drain(&mut engine);
    let clash = "CN=G,OU=G,DC=lab is held by another object; written as CN=G_g,OU=G,DC=lab";
    let clashed = cmd::Outcome { name_clash: clash.into(), ..outcome("g", "upsert", cmd::OutcomeStatus::Applied) };
    engine.apply_outcome(&clashed, &at(1)).unwrap();
    assert_eq!(engine.store().group_detail("g").unwrap().unwrap().name_clash, clash);
    assert_eq!(engine.store().gauges().unwrap().name_clashes, 1);
    let audit = engine.store().audit_log("g", 1).unwrap();
    assert!(audit[0].detail.contains(&format!("name clash: {clash}")), "{audit:?}");
    let clear = cmd::Outcome { sequence: 1_001, ..outcome("g", "upsert", cmd::OutcomeStatus::Applied) };
    engine.apply_outcome(&clear, &at(2)).unwrap();
    assert_eq!(engine.store().group_detail("g").unwrap().unwrap().name_clash, "");
    assert_eq!(engine.store().gauges().unwrap().name_clashes, 0);
}
