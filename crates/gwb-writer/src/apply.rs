//! Applying a batch of commands from one partition: in order per group, with
//! consecutive member changes of a group merged into one directory write, and one
//! publisher-confirm round trip for all the batch's outcomes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::Mutex;

use gwb_bus::{Delivery, Disposition, Message, Route};
use gwb_core::command::{ApplyReport, FailureClass, MemberRef, WriteCommand};
use gwb_ldap::Directory;
use gwb_proto::commands::v1 as cmd;

use crate::{Shared, backoff, convert, fill_failure, fill_report, now_ms, observe_ldap, record_outcome};

/// One directory write standing for one or more commands (by delivery index).
struct Unit {
    indices: Vec<usize>,
    command: WriteCommand,
}

/// Appends `command` to the units, merging it into the previous unit of the same group
/// when both add (or both remove) members: nothing of that group lies between them,
/// so the union is the same change in one write.
fn push_merged(units: &mut Vec<Unit>, last_of_group: &mut HashMap<String, usize>, index: usize, command: WriteCommand) {
    let anchor = command.anchor().to_string();
    if let Some(&position) = last_of_group.get(&anchor) {
        let unit = &mut units[position];
        let merged = match (&mut unit.command, &command) {
            (WriteCommand::AddMembers { members, .. }, WriteCommand::AddMembers { members: more, .. })
            | (WriteCommand::RemoveMembers { members, .. }, WriteCommand::RemoveMembers { members: more, .. }) => {
                members.extend(more.iter().cloned());
                true
            }
            _ => false,
        };
        if merged {
            unit.indices.push(index);
            return;
        }
    }
    last_of_group.insert(anchor, units.len());
    units.push(Unit { indices: vec![index], command });
}

fn member_refs(command: &WriteCommand) -> BTreeSet<MemberRef> {
    match command {
        WriteCommand::AddMembers { members, .. } | WriteCommand::RemoveMembers { members, .. } => members.iter().cloned().collect(),
        _ => BTreeSet::new(),
    }
}

pub async fn handle_batch(shared: Arc<Shared>, directory: Arc<Mutex<Option<Directory>>>, deliveries: Vec<Delivery>) -> Vec<Disposition> {
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
    for unit in units {
        if shared.shutdown.is_triggered() {
            // Not applied: left unacked (Requeue) for the next writer.
            break;
        }
        let result = if shared.dry_run { Some(Ok(ApplyReport::default())) } else { apply_with_retry(&shared, &mut guard, &unit.command).await };
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
                        members_rejected: report.members_rejected.iter().filter(|(m, _)| own.contains(m)).cloned().collect(),
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

/// Applies one write, retrying transient directory errors in place (a partition never
/// moves past a command it could not apply). `None` when shutdown interrupted it.
async fn apply_with_retry(
    shared: &Shared,
    directory: &mut Option<Directory>,
    command: &WriteCommand,
) -> Option<Result<ApplyReport, gwb_ldap::DirectoryError>> {
    let mut failures = 0u32;
    loop {
        if shared.shutdown.is_triggered() {
            return None;
        }
        let result = match directory.as_mut() {
            Some(connected) => connected.apply(command).await,
            None => match Directory::connect(shared.directory_config.clone()).await {
                Ok(mut connected) => {
                    connected.set_observer(Arc::new(observe_ldap));
                    directory.insert(connected).apply(command).await
                }
                Err(error) => Err(error),
            },
        };
        match result {
            Err(error) if error.class == FailureClass::Transient => {
                failures += 1;
                let delay = backoff(failures);
                tracing::warn!(%error, kind = command.kind(), anchor = command.anchor(), retry_in_ms = delay.as_millis() as u64, "directory unavailable; retrying");
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
        WriteCommand::AddMembers { anchor: anchor.into(), members: sids.iter().map(|s| MemberRef::Sid(s.to_string())).collect() }
    }

    fn remove(anchor: &str, sids: &[&str]) -> WriteCommand {
        WriteCommand::RemoveMembers { anchor: anchor.into(), members: sids.iter().map(|s| MemberRef::Sid(s.to_string())).collect() }
    }

    #[test]
    fn consecutive_member_changes_of_a_group_merge_without_reordering_it() {
        let mut units = Vec::new();
        let mut last = HashMap::new();
        let sequence = [add("A", &["1"]), add("B", &["2"]), add("A", &["3"]), remove("A", &["1"]), add("A", &["4"]), WriteCommand::Delete { anchor: "B".into() }, add("B", &["5"])];
        for (index, command) in sequence.into_iter().enumerate() {
            push_merged(&mut units, &mut last, index, command);
        }
        let shape: Vec<(Vec<usize>, &str, usize)> = units.iter().map(|u| (u.indices.clone(), u.command.kind(), member_refs(&u.command).len())).collect();
        assert_eq!(
            shape,
            vec![
                (vec![0, 2], "add_members", 2),
                (vec![1], "add_members", 1),
                (vec![3], "remove_members", 1),
                (vec![4], "add_members", 1),
                (vec![5], "delete", 0),
                (vec![6], "add_members", 1),
            ]
        );
    }
}
