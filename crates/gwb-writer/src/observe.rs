//! What the writer records in the process's metrics: each LDAP operation and each
//! confirmed outcome.

use std::time::Duration;

use gwb_proto::commands::v1 as cmd;

/// LDAP operations by kind and result, with their duration (the directory's observer).
pub(crate) fn observe_ldap(record: &gwb_ldap::OperationRecord) {
    if let Some(metrics) = gwb_runtime::metrics::global() {
        metrics.ldap_operation(record.kind.as_str(), &record.outcome.label(), record.duration);
    }
}

/// Commands by kind and result, members written and the end-to-end latency. Called
/// once the outcome is confirmed: an outcome the broker did not take is not counted,
/// since its command will be applied again.
pub(crate) fn record_outcome(outcome: &cmd::Outcome) {
    let Some(metrics) = gwb_runtime::metrics::global() else { return };
    let result = match cmd::OutcomeStatus::try_from(outcome.status) {
        Ok(cmd::OutcomeStatus::Applied) => "applied",
        Ok(cmd::OutcomeStatus::DryRun) => "dry_run",
        _ => "failed",
    };
    metrics.command(&outcome.kind, result);
    if result == "applied" {
        metrics.members_written(u64::from(outcome.members_added));
        if outcome.observed_at_ms > 0 {
            // From the moment the collector saw the change in Graph to this AD write.
            let latency = (outcome.completed_at_ms - outcome.observed_at_ms).max(0) as u64;
            metrics.end_to_end_latency(Duration::from_millis(latency));
        }
    }
}
