//! The planning engine: applies events, outcomes and operator requests to the store
//! and writes the resulting commands into the outbox, each in one transaction.
//!
//! Cost model: a membership change touches one membership row and emits at most one
//! command (O(change)); only a group's first write, a re-enable and a full-round sweep
//! walk a whole group.
//!
//! Planning runs over [`StoreTx`] and does no I/O of its own: it neither counts
//! metrics nor reads trace contexts. Each call returns what it [`Planned`], and the
//! caller records that after the commit (a preview, rolled back, plans nothing).

mod changes;
mod deletions;
mod drift;
mod members;
mod operator;
mod outcomes;
mod rounds;
#[cfg(test)]
mod tests;

pub use drift::DriftRequest;

use prost::Message as _;

use gwb_core::command::{CommandKind, WriteCommand};
use gwb_core::deletion::{DeletionThreshold, MemberRemovalThreshold};
use gwb_core::event::{Change, ChangeEvent, RemovalReason};
use gwb_core::policy::{DirectorySchema, Placement, Scope};
use gwb_core::state::WritebackState;
use gwb_proto::commands::v1 as cmd;
use gwb_proto::convert::commands::{Envelope, command_to_wire, describe_command};

use crate::config::{RemovalAction, UserSoftDelete};
use crate::store::{AuditEntry, AuditResult, Meta, PlannedCommand, Store, StoreError, StoreTx};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("invalid event: {0}")]
    Invalid(String),
}

pub struct PolicySettings {
    pub scope: Scope,
    pub placement: Placement,
    pub member_batch_size: usize,
    pub on_leave_scope: RemovalAction,
    pub on_soft_delete: RemovalAction,
    pub on_user_soft_delete: UserSoftDelete,
    pub retired_ou: Option<String>,
    pub partitions: u16,
    pub threshold: DeletionThreshold,
    /// Counted in `threshold`'s window.
    pub member_removals: MemberRemovalThreshold,
    pub drift: gwb_core::drift::DriftPolicy,
}

/// When a planning call runs and the trace its commands belong to.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub now_ms: i64,
    /// W3C trace context (JSON object) stored with each command planned.
    pub trace: String,
}

/// One change event to plan (decoded from the bus at the edge), under its own span
/// and trace.
pub struct Incoming {
    pub event: ChangeEvent,
    pub span: tracing::Span,
    /// The event's trace context (JSON), carried into the commands it causes.
    pub trace: String,
}

/// The commands a committed call planned: (kind, description), in order.
#[derive(Debug, Default)]
pub struct Planned {
    pub commands: Vec<(CommandKind, String)>,
    /// Drift found in directory observations, by kind.
    pub drift: Vec<gwb_core::drift::DriftKind>,
    /// Drifted groups a repair was planned for.
    pub drift_repaired: u64,
}

/// What [`Engine::apply_events`] did.
#[derive(Debug)]
pub struct Applied {
    /// Events applied (or recognised as applied before), from the start of the batch.
    pub events: usize,
    /// What those events planned, committed.
    pub planned: Planned,
    /// The error that stopped the batch at `events`.
    pub failure: Option<EngineError>,
}

pub struct Engine<S> {
    store: S,
    policy: PolicySettings,
}

/// Why commands are being planned, carried into each command.
struct Cause {
    text: String,
    observed_at_ms: i64,
    now_ms: i64,
    trace: String,
    /// An operator's explicit request: its deletions are not held by the threshold.
    operator: bool,
}

impl Cause {
    fn cloud(text: impl Into<String>, observed_at_ms: i64, origin: &Origin) -> Self {
        Cause { text: text.into(), observed_at_ms, now_ms: origin.now_ms, trace: origin.trace.clone(), operator: false }
    }

    fn operator(text: impl Into<String>, origin: &Origin) -> Self {
        Cause {
            text: text.into(),
            observed_at_ms: 0,
            now_ms: origin.now_ms,
            trace: origin.trace.clone(),
            operator: true,
        }
    }
}

impl<S: Store> Engine<S> {
    pub fn new(store: S, policy: PolicySettings) -> Self {
        Engine { store, policy }
    }

    /// The store, for the read-only queries of the control API.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Applies events in order with one commit for all of them: a commit costs far more
    /// than planning one membership, and the collector publishes events in bursts.
    /// Each event is planned under its own span and trace. When an event fails, the
    /// whole transaction is rolled back and the events before it are applied again on
    /// their own (per-event savepoints would make SQLite copy every page a statement
    /// touches, doubling the cost of the normal case); the failed event and those
    /// after it are left to be redelivered, so order is never broken.
    pub fn apply_events(&mut self, events: &[Incoming], now_ms: i64) -> Applied {
        match self.apply_all(events, now_ms) {
            Ok(planned) => Applied { events: events.len(), planned, failure: None },
            Err((0, error)) => Applied { events: 0, planned: Planned::default(), failure: Some(error) },
            Err((failed_at, error)) => match self.apply_all(&events[..failed_at], now_ms) {
                Ok(planned) => Applied { events: failed_at, planned, failure: Some(error) },
                Err((_, retry_error)) => {
                    tracing::error!(error = %retry_error, "re-applying the events before a failed one failed too");
                    Applied { events: 0, planned: Planned::default(), failure: Some(error) }
                }
            },
        }
    }

    /// All of `events` in one transaction, or none of them: the error carries the
    /// index of the event that failed (0 when the transaction itself failed).
    fn apply_all(&mut self, events: &[Incoming], now_ms: i64) -> Result<Planned, (usize, EngineError)> {
        let mut tx = self.store.transaction().map_err(|error| (0, error.into()))?;
        let mut planned = Planned::default();
        for (index, incoming) in events.iter().enumerate() {
            let _entered = incoming.span.enter();
            let origin = Origin { now_ms, trace: incoming.trace.clone() };
            apply_one(&mut tx, &self.policy, &incoming.event, &origin, &mut planned).map_err(|error| (index, error))?;
        }
        tx.commit().map_err(|error| (0, error.into()))?;
        Ok(planned)
    }

    /// Runs `work` as one plan in one transaction, committed when it succeeds.
    fn in_transaction<T>(
        &mut self,
        cause: Cause,
        work: impl FnOnce(&mut Plan<'_, S::Tx<'_>>) -> Result<T, EngineError>,
    ) -> Result<(T, Planned), EngineError> {
        let mut tx = self.store.transaction()?;
        let mut planned = Planned::default();
        let value = {
            let mut plan =
                Plan { tx: &mut tx, policy: &self.policy, cause, ignore_switch: false, planned: &mut planned };
            work(&mut plan)?
        };
        tx.commit()?;
        Ok((value, planned))
    }

    pub fn apply_outcome(&mut self, outcome: &cmd::Outcome, origin: &Origin) -> Result<Planned, EngineError> {
        let cause = Cause::cloud(format!("writer outcome {}", outcome.command_id), 0, origin);
        Ok(self.in_transaction(cause, |plan| plan.outcome(outcome))?.1)
    }

    /// The writer's directory watcher's observation: drift found, reported, repaired.
    pub fn apply_observation(
        &mut self,
        observation: &gwb_core::drift::Observation,
        origin: &Origin,
    ) -> Result<Planned, EngineError> {
        let cause = Cause::cloud("AD edit", 0, origin);
        Ok(self.in_transaction(cause, |plan| plan.observation(observation))?.1)
    }

    pub fn apply_writer_status(&mut self, status: &cmd::WriterStatus, origin: &Origin) -> Result<Planned, EngineError> {
        let cause = Cause::cloud("directory schema discovered", 0, origin);
        Ok(self.in_transaction(cause, |plan| plan.writer_status(status))?.1)
    }

    /// Oldest outbox entries, in order.
    pub fn outbox_batch(&self, limit: usize) -> Result<Vec<crate::store::OutboxRow>, EngineError> {
        Ok(self.store.outbox_batch(limit)?)
    }

    pub fn outbox_published(&mut self, up_to_seq: i64) -> Result<(), EngineError> {
        Ok(self.store.outbox_published(up_to_seq)?)
    }

    /// Forgets processed event ids older than `before_ms` (replays older than that are
    /// still harmless: every change is applied idempotently).
    pub fn prune_processed(&mut self, before_ms: i64) -> Result<(), EngineError> {
        Ok(self.store.prune_processed(before_ms)?)
    }
}

/// Plans one event inside the caller's transaction.
fn apply_one<T: StoreTx>(
    tx: &mut T,
    policy: &PolicySettings,
    event: &ChangeEvent,
    origin: &Origin,
    planned: &mut Planned,
) -> Result<bool, EngineError> {
    // Redelivery is deduplicated by the event id: without one, a replay would be
    // planned again. The bus decoder refuses such events; this guards other callers.
    if event.event_id.is_empty() {
        return Err(EngineError::Invalid("event without an event id".into()));
    }
    if !tx.mark_processed(&event.event_id, origin.now_ms)? {
        return Ok(false);
    }
    let cause = Cause::cloud(event.cause.clone(), event.observed_at_ms, origin);
    let mut plan = Plan { tx, policy, cause, ignore_switch: false, planned };
    let round = event.round_id.as_str();
    match &event.change {
        Change::User(user) => plan.user_upsert(user, round)?,
        Change::UserRemoved(removed) => plan.user_removed(&removed.id, removed.reason == RemovalReason::Deleted)?,
        Change::Group(group) => plan.group_upsert(group, round)?,
        // Only a permanent delete is hard; a soft-deleted group may be restored.
        Change::GroupRemoved(removed) => plan.group_removed(&removed.id, removed.reason == RemovalReason::Deleted)?,
        Change::RoundStarted(boundary) => plan.round_started(boundary, round)?,
        Change::RoundCompleted(boundary) => plan.round_completed(boundary, round)?,
    }
    Ok(true)
}

/// One planning step over an open transaction.
struct Plan<'p, T> {
    tx: &'p mut T,
    policy: &'p PolicySettings,
    cause: Cause,
    /// Plan as if writeback were on (previews).
    ignore_switch: bool,
    planned: &'p mut Planned,
}

impl<T: StoreTx> Plan<'_, T> {
    fn enabled(&self) -> Result<bool, StoreError> {
        Ok(self.ignore_switch || self.tx.meta(&Meta::WritebackEnabled)?.as_deref() == Some("1"))
    }

    fn schema(&self) -> Result<DirectorySchema, StoreError> {
        Ok(DirectorySchema {
            has_exchange: self.tx.meta(&Meta::HasExchangeSchema)?.as_deref() == Some("1"),
            mail_refusal: self.tx.meta(&Meta::MailRefusal)?.filter(|refusal| !refusal.is_empty()),
        })
    }

    fn state_of(&self, group_id: &str) -> Result<Option<WritebackState>, StoreError> {
        Ok(self.tx.writeback(group_id)?.map(|row| row.state))
    }

    fn set_state(&mut self, group_id: &str, state: WritebackState, reason: &str) -> Result<(), StoreError> {
        self.tx.set_state(group_id, state, reason, self.cause.now_ms)
    }

    fn ensure_row(&mut self, group_id: &str) -> Result<(), StoreError> {
        self.tx.ensure_writeback(group_id, self.cause.now_ms)
    }

    /// Plans one command for the group: into the outbox, in flight, audited. A
    /// contested group gets none (audited as held): it waits for the operator, who
    /// clearing it re-sends the group in full.
    fn emit(&mut self, group_id: &str, command: WriteCommand) -> Result<(), EngineError> {
        let kind = command.command_kind();
        if let Some(reason) = self.tx.drift_group(group_id)?.contested {
            let detail = format!("not sent, the group is contested: {}", describe_command(&command));
            tracing::info!(group = %group_id, %reason, "command for a contested group held");
            return Ok(self.audit(group_id, kind, AuditResult::Held, &detail)?);
        }
        let sequence = self.tx.next_sequence(group_id)?;
        let detail = describe_command(&command);
        let command_id = uuid::Uuid::new_v4().to_string();
        let envelope = Envelope {
            command_id: command_id.clone(),
            group_id: group_id.to_string(),
            sequence,
            cause: self.cause.text.clone(),
            observed_at_ms: self.cause.observed_at_ms,
            planned_at_ms: self.cause.now_ms,
        };
        self.tx.enqueue(&PlannedCommand {
            command_id,
            group_id: group_id.to_string(),
            kind,
            partition: gwb_bus::partition_of(group_id, self.policy.partitions),
            payload: command_to_wire(envelope, &command).encode_to_vec(),
            headers: if self.cause.trace.is_empty() { "{}".into() } else { self.cause.trace.clone() },
            planned_ms: self.cause.now_ms,
            cause: self.cause.text.clone(),
            detail: detail.clone(),
        })?;
        self.planned.commands.push((kind, detail));
        Ok(())
    }

    /// An audit entry for a decision that sends no command.
    fn audit(
        &mut self,
        group_id: &str,
        kind: CommandKind,
        result: AuditResult,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.tx.audit(&AuditEntry {
            at_ms: self.cause.now_ms,
            group_id,
            command_id: "",
            kind: kind.as_str(),
            result,
            cause: &self.cause.text,
            detail,
        })
    }
}
