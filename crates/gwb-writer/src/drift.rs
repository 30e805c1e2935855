//! The directory watcher: follows changes to groups on the writer's DC and publishes
//! what it saw as `DirectoryObservation`s on the outcomes route. It decides nothing:
//! the planner compares observations with the desired state and plans any repair as
//! ordinary commands.
//!
//! A poll reads the DC's `highestCommittedUSN` (one rootDSE read); only when it moved
//! does it search for groups changed since the mark. The mark (DC name, invocationId,
//! USN) is kept in `[drift] state_file` once the observations are confirmed, so a
//! restart resumes; without a mark, on another DC, after a restore (invocationId
//! changed, USN went backwards) and every `full_interval_minutes`, it reports every
//! group instead (a full comparison).
//!
//! The planner must receive an observation after the outcomes of every write it
//! reflects, and never an observation older than an outcome it already has (the group
//! would look drifted back). So a poll searches without holding anything, then takes
//! the apply gate exclusively — batches that were applying finish and publish their
//! outcomes first — leaves out the groups written during the search (their state may
//! predate an outcome the planner has; their USN is above the new mark, so the next
//! poll reports them), and publishes. Batches wait only for that publish.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;

use gwb_bus::{Message, Route};
use gwb_core::drift::{Observation, ObservedGroup};
use gwb_ldap::{Directory, DirectoryError, WatchPosition};
use gwb_proto::commands::v1 as cmd;
use gwb_proto::message_types::OBSERVATION_TYPE;

use crate::Shared;
use crate::config::DriftWatchSettings;

/// Groups per message: a full comparison of a large tenant is split so no message
/// comes near the broker's size limit.
const GROUPS_PER_MESSAGE: usize = 100;

/// Runs the watcher until shutdown.
pub(crate) async fn watch(shared: Arc<Shared>, settings: DriftWatchSettings) {
    let mut watcher = Watcher {
        directory: None,
        mark: settings.state_file.as_deref().and_then(load_mark),
        verified: false,
        last_full_ms: None,
    };
    let every = Duration::from_millis(settings.poll_interval_ms.max(50));
    while !shared.shutdown.is_triggered() {
        if shared.pause.reason().is_none()
            && let Err(error) = watcher.poll(&shared, &settings).await
        {
            tracing::warn!(%error, "directory watch poll failed; retrying at the next poll");
            watcher.directory = None;
            watcher.verified = false;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.shutdown.triggered() => {}
        }
    }
}

struct Watcher {
    directory: Option<Directory>,
    mark: Option<WatchPosition>,
    /// The mark was checked against the DC's invocationId on this connection.
    verified: bool,
    last_full_ms: Option<i64>,
}

impl Watcher {
    async fn poll(&mut self, shared: &Shared, settings: &DriftWatchSettings) -> Result<(), String> {
        if self.directory.is_none() {
            let mut connected = Directory::connect(shared.directory_config.clone()).await.map_err(|e| e.to_string())?;
            connected.set_observer(Arc::new(|record: &gwb_ldap::OperationRecord| {
                crate::observe::observe_ldap(record);
                if let Some(metrics) = gwb_runtime::metrics::global() {
                    metrics.drift_watch_operation();
                }
            }));
            self.directory = Some(connected);
        }
        let Some(directory) = self.directory.as_mut() else { return Ok(()) };
        let (dc, usn) = directory.highest_usn().await.map_err(|e| e.to_string())?;
        let now_ms = shared.clock.now_ms();
        // A watcher that resumed from its mark counts its start as the last full
        // comparison, so the periodic one still comes.
        let first_poll = self.last_full_ms.is_none();
        let last_full = *self.last_full_ms.get_or_insert(now_ms);
        let full_due = settings.full_interval_minutes > 0
            && now_ms - last_full >= (settings.full_interval_minutes as i64).saturating_mul(60_000);
        let mut full = full_due || first_poll && self.mark.is_none();
        let position = match &self.mark {
            Some(mark) if mark.dc.eq_ignore_ascii_case(&dc) && usn >= mark.highest_usn && self.verified => {
                if usn == mark.highest_usn && !full {
                    return Ok(());
                }
                WatchPosition { dc, invocation_id: mark.invocation_id.clone(), highest_usn: usn }
            }
            _ => {
                let position = directory.watch_position().await.map_err(|e| e.to_string())?;
                let same_dc = self.mark.as_ref().is_some_and(|mark| {
                    mark.dc.eq_ignore_ascii_case(&position.dc)
                        && mark.invocation_id == position.invocation_id
                        && position.highest_usn >= mark.highest_usn
                });
                if !same_dc {
                    if let Some(mark) = &self.mark {
                        tracing::info!(was = ?mark, now = ?position, "directory watch: another DC or a restored one; full comparison");
                    }
                    full = true;
                }
                self.verified = true;
                position
            }
        };
        if !full && self.mark.as_ref().is_some_and(|mark| mark.highest_usn == position.highest_usn) {
            self.mark = Some(position);
            return Ok(());
        }
        let after = if full { None } else { self.mark.as_ref().map(|mark| mark.highest_usn) };
        let written = take_written(shared);
        let mut groups = directory.observe_groups(after, &written).await.map_err(|e: DirectoryError| e.to_string())?;
        let _gate = shared.apply_gate.write().await;
        let written_meanwhile = take_written(shared);
        groups.retain(|group| !written_meanwhile.contains(&group.object_guid));
        if full {
            tracing::info!(groups = groups.len(), dc = %position.dc, "directory watch: full comparison");
        }
        if !groups.is_empty() || full {
            tracing::debug!(groups = groups.len(), full, "directory watch observed groups");
            publish(shared, &position, full, groups, now_ms).await?;
        }
        // The USN was read before the search: whatever changed meanwhile is seen again
        // at the next poll, never skipped.
        if let Some(path) = settings.state_file.as_deref() {
            save_mark(path, &position)?;
        }
        self.mark = Some(position);
        if full {
            self.last_full_ms = Some(now_ms);
        }
        Ok(())
    }
}

/// The objectGUIDs of the groups written since the last call.
fn take_written(shared: &Shared) -> std::collections::HashSet<String> {
    shared.written.lock().map(|mut set| std::mem::take(&mut *set)).unwrap_or_default()
}

async fn publish(
    shared: &Shared,
    position: &WatchPosition,
    full: bool,
    groups: Vec<ObservedGroup>,
    now_ms: i64,
) -> Result<(), String> {
    let mut batch = Vec::new();
    for (index, chunk) in groups.chunks(GROUPS_PER_MESSAGE).enumerate() {
        let observation = Observation {
            writer_id: shared.writer_id.clone(),
            dc: position.dc.clone(),
            observed_at_ms: now_ms,
            full,
            groups: chunk.to_vec(),
        };
        let message = Message {
            id: format!("observation-{}-{}-{index}", shared.writer_id, position.highest_usn),
            kind: OBSERVATION_TYPE,
            payload: cmd::DirectoryObservation::from(&observation).encode_to_vec(),
            headers: Default::default(),
            timestamp_ms: now_ms,
        };
        batch.push((Route::Outcomes, message));
    }
    shared.publisher.publish_all(&batch).await.map_err(|e| format!("publishing observations: {e}"))
}

/// The stored mark: three `key=value` lines. Unreadable or incomplete: none (a full
/// comparison follows, which is always safe).
fn load_mark(path: &Path) -> Option<WatchPosition> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut mark = WatchPosition::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("dc", value)) => mark.dc = value.to_string(),
            Some(("invocation_id", value)) => mark.invocation_id = value.to_string(),
            Some(("usn", value)) => mark.highest_usn = value.parse().ok()?,
            _ => {}
        }
    }
    (!mark.dc.is_empty() && !mark.invocation_id.is_empty()).then_some(mark)
}

/// Written to a temporary file and renamed, so a crash leaves the old mark or the new.
fn save_mark(path: &Path, mark: &WatchPosition) -> Result<(), String> {
    let text = format!("dc={}\ninvocation_id={}\nusn={}\n", mark.dc, mark.invocation_id, mark.highest_usn);
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| format!("cannot store the watch mark in {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_survives_a_restart_and_a_damaged_one_means_a_full_comparison() {
        let dir = std::env::temp_dir().join(format!("gwb-drift-mark-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mark");
        let mark = WatchPosition { dc: "dc1.lab.example".into(), invocation_id: "abc".into(), highest_usn: 4242 };
        save_mark(&path, &mark).unwrap();
        assert_eq!(load_mark(&path), Some(mark));
        std::fs::write(&path, "dc=dc1\nusn=12\n").unwrap();
        assert_eq!(load_mark(&path), None, "no invocationId");
        std::fs::write(&path, "dc=dc1\ninvocation_id=x\nusn=twelve\n").unwrap();
        assert_eq!(load_mark(&path), None);
        assert_eq!(load_mark(&dir.join("absent")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
