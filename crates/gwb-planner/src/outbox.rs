//! Publishes the transactional outbox: rows in order, with confirms, deleted only
//! once confirmed. After a crash the rows are still there and are published again
//! (the writer is idempotent). Also keeps the gauges fresh and prunes old event ids.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use gwb_bus::{Message, Publisher, Route};
use gwb_proto::message_types::COMMAND_TYPE;
use gwb_runtime::clock::Clock;
use gwb_runtime::shutdown::Shutdown;

use crate::SharedEngine;
use crate::plan::{Engine, EngineError};
use crate::store::queries::Queries;
use crate::store::sqlite::SqliteStore;

pub(crate) struct Outbox {
    pub engine: SharedEngine,
    pub publisher: Publisher,
    pub ready: Arc<Notify>,
    /// Plan everything, send nothing: rows are audited as `staged` instead.
    pub staging: bool,
    pub clock: Clock,
}

/// Event ids are remembered for a week: replays older than that are still harmless,
/// since every change is applied idempotently.
const PROCESSED_RETENTION_MS: i64 = 7 * 24 * 3_600_000;

impl Outbox {
    /// Runs `work` on the engine in `spawn_blocking`; a failure is logged with `what`
    /// and yields None, so the loop carries on and tries again later.
    async fn with_engine<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&mut Engine<SqliteStore>) -> Result<T, EngineError> + Send + 'static,
    ) -> Option<T> {
        let engine = self.engine.clone();
        let result = tokio::task::spawn_blocking(move || match engine.lock() {
            Ok(mut engine) => work(&mut engine).map_err(|e| e.to_string()),
            Err(_) => Err("planner state lock poisoned".to_string()),
        })
        .await;
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                tracing::error!(%error, "{what} failed");
                None
            }
            Err(error) => {
                tracing::error!(%error, "{what}: planner task failed");
                None
            }
        }
    }

    async fn wait(&self, shutdown: &Shutdown, pause: Duration) -> bool {
        tokio::select! {
            _ = self.ready.notified() => true,
            _ = tokio::time::sleep(pause) => true,
            _ = shutdown.triggered() => false,
        }
    }

    async fn housekeeping(&self, last_gauges: &mut i64, last_prune: &mut i64) {
        let now = self.clock.now_ms();
        if now - *last_gauges > 5_000 {
            *last_gauges = now;
            let gauges = self.with_engine("reading the gauges", |engine| Ok(engine.store().gauges()?)).await;
            if let Some(gauges) = gauges
                && let Some(metrics) = gwb_runtime::metrics::global()
            {
                metrics.held_deletions(gauges.held_deletions);
                metrics.held_member_removals(gauges.held_member_removals);
                metrics.name_clashes(gauges.name_clashes);
                for (category, count) in skipped_by_category(gauges.skipped) {
                    metrics.skipped_members(&category, count);
                }
            }
            let contested = self
                .with_engine("reading the contested groups", |engine| {
                    Ok(crate::store::DriftQueries::contested_count(engine.store())?)
                })
                .await;
            if let Some(contested) = contested
                && let Some(metrics) = gwb_runtime::metrics::global()
            {
                metrics.contested_groups(contested);
            }
        }
        if now - *last_prune > 3_600_000 {
            *last_prune = now;
            self.with_engine("pruning processed event ids", move |engine| {
                engine.prune_processed(now - PROCESSED_RETENTION_MS)
            })
            .await;
        }
    }
}

pub(crate) async fn publish(outbox: Outbox, shutdown: Shutdown) {
    let (mut last_prune, mut last_gauges) = (0i64, 0i64);
    while !shutdown.is_triggered() {
        if outbox.staging {
            let now_ms = outbox.clock.now_ms();
            let staged = outbox.with_engine("staging the outbox", move |engine| engine.stage_outbox(now_ms)).await;
            if staged.unwrap_or(0) == 0 && !outbox.wait(&shutdown, Duration::from_millis(500)).await {
                return;
            }
            continue;
        }
        let batch = outbox.with_engine("reading the outbox", |engine| engine.outbox_batch(1000)).await;
        let Some(batch) = batch.filter(|batch| !batch.is_empty()) else {
            outbox.housekeeping(&mut last_gauges, &mut last_prune).await;
            if !outbox.wait(&shutdown, Duration::from_millis(500)).await {
                return;
            }
            continue;
        };
        let last_seq = batch.last().map(|row| row.seq).unwrap_or(0);
        let now_ms = outbox.clock.now_ms();
        let messages: Vec<(Route, Message)> = batch
            .into_iter()
            .map(|row| {
                let message = Message {
                    id: row.command_id,
                    kind: COMMAND_TYPE,
                    payload: row.payload,
                    headers: row.headers,
                    timestamp_ms: now_ms,
                };
                (Route::Command { partition: row.partition }, message)
            })
            .collect();
        match outbox.publisher.publish_all(&messages).await {
            Ok(()) => {
                let trimmed = outbox
                    .with_engine("trimming the outbox (its commands will be published again)", move |engine| {
                        engine.outbox_published(last_seq)
                    })
                    .await;
                if trimmed.is_none() && !outbox.wait(&shutdown, Duration::from_secs(1)).await {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "publishing commands failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.triggered() => return,
                }
            }
        }
    }
}

/// Skipped-member reasons may carry details (a server message, a value): the category
/// before them keeps the metric's label set small.
fn skipped_by_category(by_reason: Vec<(String, u64)>) -> Vec<(String, u64)> {
    let mut by_category: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for (reason, count) in by_reason {
        let category = reason.split([':', '(']).next().unwrap_or_default().trim().to_string();
        *by_category.entry(category).or_default() += count;
    }
    by_category.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_reasons_are_counted_by_their_category() {
        let reasons = vec![
            ("AD refused the member: no such object".to_string(), 2),
            ("AD refused the member: busy".to_string(), 1),
            ("cloud-only user (no onPremisesSecurityIdentifier)".to_string(), 4),
        ];
        assert_eq!(
            skipped_by_category(reasons),
            vec![("AD refused the member".to_string(), 3), ("cloud-only user".to_string(), 4)]
        );
    }
}
