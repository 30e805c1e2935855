//! Applying a batch of commands from one partition, in three steps: decode the
//! deliveries (refusing what is not a command or cannot be applied), apply the merged
//! units to the directory (retrying transient errors in place), then publish every
//! outcome with one publisher-confirm round trip and only then settle the deliveries.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::Mutex;

use gwb_bus::{Delivery, Disposition, Message, Route};
use gwb_core::command::{ApplyReport, FailureClass, WriteCommand};
use gwb_ldap::{Directory, DirectoryError};
use gwb_proto::commands::v1 as cmd;
use gwb_proto::convert::commands::{command_from_wire, fill_failure, fill_report};
use gwb_proto::message_types::{COMMAND_TYPE, OUTCOME_TYPE};

use crate::Shared;
use crate::merge::{self, Unit, Write};
use crate::observe::{observe_ldap, record_outcome};

/// A delivery that decoded to a command: the wire form (its ids go into the outcome)
/// and what it asks for.
struct Decoded {
    wire: cmd::WriteCommand,
    command: WriteCommand,
}

/// An outcome to publish, and how to settle its delivery once the broker confirmed it.
struct Pending {
    index: usize,
    outcome: cmd::Outcome,
    disposition: Disposition,
}

/// A decoded batch, by delivery index.
struct Batch {
    /// Until an outcome is confirmed a delivery is left for redelivery (`Requeue`);
    /// what is not a command at all is dead-lettered at once.
    dispositions: Vec<Disposition>,
    commands: Vec<Option<Decoded>>,
    /// Outcomes of commands refused while decoding.
    refused: Vec<Pending>,
}

/// One partition's batch: the dispositions of its deliveries, in delivery order. A
/// pause holds the batch (unacked) before anything is applied.
pub async fn handle_batch(
    shared: Arc<Shared>,
    directory: Arc<Mutex<Option<Directory>>>,
    deliveries: Vec<Delivery>,
) -> Vec<Disposition> {
    let Batch { dispositions, commands, mut refused } = decode_batch(&shared, &deliveries);
    let units = merge::units(
        commands.iter().enumerate().filter_map(|(index, entry)| entry.as_ref().map(|d| (index, &d.command))),
    );
    if shared.pause.reason().is_some() {
        tokio::select! {
            _ = shared.pause.wait_until_running() => {}
            _ = shared.shutdown.triggered() => {}
        }
    }
    // Held until the outcomes are confirmed (see `Shared::apply_gate`).
    let _gate = shared.apply_gate.read().await;
    let applied = apply_units(&shared, &directory, &commands, units).await;
    refused.extend(applied);
    publish_outcomes(&shared, refused, dispositions).await
}

fn decode_batch(shared: &Shared, deliveries: &[Delivery]) -> Batch {
    let count = deliveries.len();
    let mut batch = Batch {
        dispositions: vec![Disposition::Requeue; count],
        commands: Vec::with_capacity(count),
        refused: Vec::new(),
    };
    for (index, delivery) in deliveries.iter().enumerate() {
        if delivery.kind.as_deref() != Some(COMMAND_TYPE) {
            tracing::error!(message_id = ?delivery.message_id, kind = ?delivery.kind, "command of an unknown type or version dead-lettered");
            batch.dispositions[index] = Disposition::DeadLetter;
            batch.commands.push(None);
            continue;
        }
        let Ok(wire) = cmd::WriteCommand::decode(delivery.payload.as_slice()) else {
            tracing::error!(message_id = ?delivery.message_id, "undecodable command dead-lettered");
            batch.dispositions[index] = Disposition::DeadLetter;
            batch.commands.push(None);
            continue;
        };
        match command_from_wire(&wire) {
            Ok(command) => batch.commands.push(Some(Decoded { wire, command })),
            Err(reason) => {
                // An outcome tells the planner, which would otherwise wait for one.
                tracing::error!(command_id = %wire.command_id, %reason, "impossible command dead-lettered");
                let mut outcome = base_outcome(shared, &wire);
                outcome.kind = "invalid".into();
                fill_failure(&mut outcome, FailureClass::Permanent, None, &format!("invalid command: {reason}"));
                outcome.completed_at_ms = shared.clock.now_ms();
                batch.refused.push(Pending { index, outcome, disposition: Disposition::DeadLetter });
                batch.commands.push(None);
            }
        }
    }
    batch
}

/// Applies the units in order and returns the outcome of each command applied. Stops
/// at shutdown: the rest stays unacked (requeued) for the next writer.
async fn apply_units(
    shared: &Shared,
    directory: &Mutex<Option<Directory>>,
    commands: &[Option<Decoded>],
    units: Vec<Unit>,
) -> Vec<Pending> {
    let mut outcomes = Vec::new();
    let mut guard = directory.lock().await;
    if !shared.dry_run {
        look_up_anchors(shared, &mut guard, &units).await;
    }
    for unit in units {
        if shared.shutdown.is_triggered() {
            break;
        }
        let mut result = Some(Ok(ApplyReport::default()));
        if !shared.dry_run {
            for write in merge::writes(&unit) {
                result = match result {
                    Some(Ok(total)) => apply_with_retry(shared, &mut guard, &write)
                        .await
                        .map(|r| r.map(|next| total.combined_with(next))),
                    other => other,
                };
            }
        }
        let Some(result) = result else { break };
        if let Ok(ApplyReport { group: Some(group), .. }) = &result
            && let Ok(mut written) = shared.written.lock()
        {
            written.insert(group.object_guid.to_ascii_lowercase());
        }
        outcomes.extend(unit_outcomes(shared, &unit, commands, &result));
    }
    outcomes
}

/// One outcome per command of `unit`. The merged write's counts go to its last
/// command; every command gets the group and the refusals of its own member values.
fn unit_outcomes(
    shared: &Shared,
    unit: &Unit,
    commands: &[Option<Decoded>],
    result: &Result<ApplyReport, DirectoryError>,
) -> Vec<Pending> {
    let last = unit.indices.last().copied();
    let mut outcomes = Vec::with_capacity(unit.indices.len());
    for &index in &unit.indices {
        let Some(Decoded { wire, command }) = commands.get(index).and_then(Option::as_ref) else { continue };
        let mut outcome = base_outcome(shared, wire);
        outcome.kind = command.kind().to_string();
        let disposition = match result {
            Ok(_) if shared.dry_run => {
                outcome.status = cmd::OutcomeStatus::DryRun as i32;
                Disposition::Ack
            }
            Ok(report) => {
                let own = merge::member_refs(command);
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
                // Only the upsert wrote the group's addresses.
                if matches!(command, WriteCommand::Upsert(_)) {
                    mine.addresses_skipped = report.addresses_skipped.clone();
                    mine.name_clash = report.name_clash.clone();
                }
                if Some(index) == last {
                    mine.members_added = report.members_added;
                    mine.members_removed = report.members_removed;
                    mine.members_unchanged = report.members_unchanged;
                }
                fill_report(&mut outcome, mine);
                Disposition::Ack
            }
            // A refusal is an answer, not a poison message: nothing was written, the
            // planner skips the group with the reason.
            Err(error) if error.class == FailureClass::Refused => {
                tracing::warn!(%error, kind = %outcome.kind, group = %wire.group_id, "group refused");
                fill_failure(&mut outcome, error.class, error.code, &error.message);
                Disposition::Ack
            }
            Err(error) => {
                tracing::error!(%error, kind = %outcome.kind, group = %wire.group_id, "command failed permanently; dead-lettered");
                fill_failure(&mut outcome, error.class, error.code, &error.message);
                Disposition::DeadLetter
            }
        };
        outcome.completed_at_ms = shared.clock.now_ms();
        outcomes.push(Pending { index, outcome, disposition });
    }
    outcomes
}

/// Publishes the outcomes with one confirm round trip; only confirmed outcomes settle
/// their deliveries (and count in the metrics).
async fn publish_outcomes(
    shared: &Shared,
    outcomes: Vec<Pending>,
    mut dispositions: Vec<Disposition>,
) -> Vec<Disposition> {
    if outcomes.is_empty() {
        return dispositions;
    }
    let batch: Vec<(Route, Message)> = outcomes
        .iter()
        .map(|pending| {
            let message = Message {
                id: format!("outcome-{}", pending.outcome.command_id),
                kind: OUTCOME_TYPE,
                payload: pending.outcome.encode_to_vec(),
                headers: Default::default(),
                timestamp_ms: shared.clock.now_ms(),
            };
            (Route::Outcomes, message)
        })
        .collect();
    match shared.publisher.publish_all(&batch).await {
        Ok(()) => {
            for pending in &outcomes {
                record_outcome(&pending.outcome);
                if let Some(disposition) = dispositions.get_mut(pending.index) {
                    *disposition = pending.disposition;
                }
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
) -> Option<Result<ApplyReport, DirectoryError>> {
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
                if let Some(budget) = error.retry_budget()
                    && failures >= budget
                {
                    tracing::warn!(%error, kind = write.kind(), anchor = write.anchor(), failures, "directory keeps refusing; giving up on this command");
                    return Some(Err(DirectoryError { class: FailureClass::Permanent, ..error }));
                }
                let delay = crate::DIRECTORY_BACKOFF.delay(failures);
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
