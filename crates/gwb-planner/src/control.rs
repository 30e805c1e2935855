//! The operator's gRPC control API (`gwb.control.v1.Operator`): requests go to the
//! engine, reads go through the store's typed queries; no SQL here.

use std::sync::{Arc, Mutex};

use tonic::{Request, Response, Status};

use gwb_proto::control::v1 as pb;
use pb::operator_server::Operator;

use gwb_core::command::GroupType;
use gwb_core::policy::{Decision, GroupOverride};
use gwb_runtime::clock::Clock;

use crate::coordination::Coordinator;
use crate::plan::{Engine, EngineError, Origin};
use crate::store::queries::{self, Queries, ServiceRow};
use crate::store::sqlite::SqliteStore;
use crate::{count_planned, origin};

type SharedEngine = Arc<Mutex<Engine<SqliteStore>>>;

pub struct ControlService {
    engine: SharedEngine,
    coordinator: Coordinator,
    clock: Clock,
}

impl ControlService {
    pub fn new(engine: SharedEngine, coordinator: Coordinator, clock: Clock) -> Self {
        ControlService { engine, coordinator, clock }
    }

    /// Runs `work` on the engine in `spawn_blocking`, at the current time and under
    /// the current trace.
    async fn with_engine<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Engine<SqliteStore>, &Origin) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, Status> {
        let engine = self.engine.clone();
        let origin = origin(self.clock.now_ms(), &tracing::Span::current());
        tokio::task::spawn_blocking(move || {
            let mut guard =
                engine.lock().map_err(|_| Status::internal("planner state lock poisoned; restart the planner"))?;
            work(&mut guard, &origin).map_err(|e| Status::internal(format!("planner store: {e}")))
        })
        .await
        .map_err(|e| Status::internal(format!("planner task failed: {e}")))?
    }

    /// Approve (or discard) what the deletion and member-removal thresholds hold.
    async fn decide_held(
        &self,
        ids: Vec<String>,
        approve: bool,
    ) -> Result<Response<pb::DeletionDecisionResponse>, Status> {
        let verb = if approve { "approved" } else { "discarded" };
        tracing::info!(groups = ids.len(), "operator {verb} held changes");
        let decided = self
            .with_engine(move |engine, origin| {
                let (decided, planned) = engine.decide_held(&ids, approve, origin)?;
                count_planned(&planned);
                Ok(decided)
            })
            .await?;
        Ok(Response::new(pb::DeletionDecisionResponse {
            affected: decided.deletions,
            member_removals: decided.member_removals,
        }))
    }
}

#[tonic::async_trait]
impl Operator for ControlService {
    async fn get_status(&self, _request: Request<pb::GetStatusRequest>) -> Result<Response<pb::Status>, Status> {
        let mut status = self.with_engine(|engine, origin| status(engine, origin.now_ms)).await?;
        // Live answers from the services the planner coordinates, when it knows them.
        status.services.extend(self.coordinator.live_health().await);
        Ok(Response::new(status))
    }

    async fn enable_writeback(
        &self,
        _request: Request<pb::EnableWritebackRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        tracing::info!("operator enabled writeback");
        self.with_engine(|engine, origin| {
            count_planned(&engine.set_writeback(true, false, origin)?);
            status(engine, origin.now_ms)
        })
        .await
        .map(Response::new)
    }

    async fn disable_writeback(
        &self,
        request: Request<pb::DisableWritebackRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        let mode = pb::DisableMode::try_from(request.get_ref().mode).unwrap_or(pb::DisableMode::Unspecified);
        let delete = match mode {
            pb::DisableMode::Keep => false,
            pb::DisableMode::Delete => true,
            pb::DisableMode::Unspecified => {
                return Err(Status::invalid_argument(
                    "say what happens to the groups already written: mode KEEP leaves them in AD, mode DELETE deletes them",
                ));
            }
        };
        tracing::info!(delete, "operator disabled writeback");
        self.with_engine(move |engine, origin| {
            count_planned(&engine.set_writeback(false, delete, origin)?);
            status(engine, origin.now_ms)
        })
        .await
        .map(Response::new)
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let request = request.into_inner();
        let page_size = if request.page_size == 0 { 100 } else { request.page_size.min(1000) } as usize;
        self.with_engine(move |engine, _| {
            let rows = engine.store().list_groups(&request.page_token, &request.state, page_size + 1)?;
            let mut groups: Vec<pb::GroupSummary> = rows.into_iter().map(summary_message).collect();
            let next_page_token = if groups.len() > page_size {
                groups.truncate(page_size);
                groups.last().map(|g| g.id.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            Ok(pb::ListGroupsResponse { groups, next_page_token })
        })
        .await
        .map(Response::new)
    }

    async fn get_group(&self, request: Request<pb::GetGroupRequest>) -> Result<Response<pb::GroupDetail>, Status> {
        let id = request.into_inner().id.to_ascii_lowercase();
        let wanted = id.clone();
        let detail = self.with_engine(move |engine, _| group_detail(engine, &wanted)).await?;
        detail.map(Response::new).ok_or_else(|| unknown_group(&id))
    }

    async fn set_group_writeback(
        &self,
        request: Request<pb::SetGroupWritebackRequest>,
    ) -> Result<Response<pb::GroupDetail>, Status> {
        let request = request.into_inner();
        let id = request.id.to_ascii_lowercase();
        let group_type = target_type(request.target_type)?;
        let parent_dn = Some(request.ou.trim().to_string()).filter(|ou| !ou.is_empty());
        if let Some(ou) = &parent_dn
            && !ou.contains('=')
        {
            return Err(Status::invalid_argument(format!(
                "ou {ou:?} is not a distinguished name (e.g. \"OU=Sales,DC=contoso,DC=com\")"
            )));
        }
        let over = GroupOverride { enabled: request.enabled, group_type, parent_dn };
        let clear = request.clear;
        tracing::info!(group = %id, ?over, clear, "operator changed a group's writeback settings");
        let wanted = id.clone();
        let detail = self
            .with_engine(move |engine, origin| {
                if group_detail(engine, &wanted)?.is_none() {
                    return Ok(Err(unknown_group(&wanted)));
                }
                if let Some(t) = over.group_type
                    && t.needs_exchange()
                    && !engine.store().has_exchange_schema()?
                {
                    return Ok(Err(Status::failed_precondition(format!(
                        "writing back as {t} needs the Exchange schema in AD, and the writer did not find it in the schema naming context; \
                         choose universalSecurityGroup or extend the AD schema for Exchange first"
                    ))));
                }
                if let Some(t) = over.group_type.filter(|t| t.needs_exchange())
                    && let Some(refusal) = engine.store().mail_refusal()?
                {
                    return Ok(Err(Status::failed_precondition(format!(
                        "writing back as {t} is refused in this forest: {refusal}; choose universalSecurityGroup"
                    ))));
                }
                count_planned(&engine.set_override(&wanted, (!clear).then_some(&over), origin)?);
                Ok(group_detail(engine, &wanted)?.ok_or_else(|| unknown_group(&wanted)))
            })
            .await??;
        Ok(Response::new(detail))
    }

    async fn preview_group(
        &self,
        request: Request<pb::PreviewGroupRequest>,
    ) -> Result<Response<pb::GroupPlan>, Status> {
        let id = request.into_inner().id.to_ascii_lowercase();
        let wanted = id.clone();
        let preview = self.with_engine(move |engine, origin| engine.preview(&wanted, origin)).await?;
        let Some(preview) = preview else { return Err(unknown_group(&id)) };
        let mut plan = pb::GroupPlan {
            id,
            members_to_write: preview.members_to_write,
            commands: preview
                .commands
                .into_iter()
                .map(|(kind, detail)| pb::PlannedCommand { kind: kind.as_str().to_string(), detail })
                .collect(),
            members_skipped: preview.skipped.into_iter().map(skipped_message).collect(),
            ..Default::default()
        };
        match preview.decision {
            Decision::Write(spec) => {
                plan.decision = "write".into();
                plan.reason = "in scope".into();
                plan.target_type = spec.group_type.graph_name().into();
                plan.dn = gwb_core::escape::child_dn(&spec.cn, &spec.parent_dn);
                plan.sam_account_name_candidates = spec.sam_account_name_candidates;
            }
            Decision::Skip(reason) => {
                plan.decision = "skip".into();
                plan.reason = reason;
            }
        }
        Ok(Response::new(plan))
    }

    async fn sync_now(
        &self,
        _request: Request<gwb_proto::control::v1::SyncNowRequest>,
    ) -> Result<Response<pb::CoordinationResponse>, Status> {
        self.coordinator.sync_now(false).await.map(Response::new)
    }

    async fn full_resync(
        &self,
        _request: Request<gwb_proto::control::v1::FullResyncRequest>,
    ) -> Result<Response<pb::CoordinationResponse>, Status> {
        tracing::info!("operator requested a full resync");
        self.coordinator.sync_now(true).await.map(Response::new)
    }

    async fn pause_writer(
        &self,
        request: Request<pb::PauseWriterRequest>,
    ) -> Result<Response<pb::CoordinationResponse>, Status> {
        let reason = request.into_inner().reason;
        tracing::info!(%reason, "operator paused the writers");
        self.coordinator.pause_writers(Some(reason)).await.map(Response::new)
    }

    async fn resume_writer(
        &self,
        _request: Request<pb::ResumeWriterRequest>,
    ) -> Result<Response<pb::CoordinationResponse>, Status> {
        tracing::info!("operator resumed the writers");
        self.coordinator.pause_writers(None).await.map(Response::new)
    }

    async fn list_held_deletions(
        &self,
        _request: Request<pb::ListHeldDeletionsRequest>,
    ) -> Result<Response<pb::ListHeldDeletionsResponse>, Status> {
        self.with_engine(|engine, _| {
            let (held, threshold_reason) = engine.store().held_deletions()?;
            let deletions = held
                .into_iter()
                .map(|h| pb::HeldDeletion {
                    group_id: h.group_id,
                    display_name: h.display_name,
                    ad_dn: h.ad_dn,
                    reason: h.reason,
                    held_at_ms: h.held_at_ms,
                })
                .collect();
            let member_removals = engine
                .store()
                .held_member_removals()?
                .into_iter()
                .map(|h| pb::HeldMemberRemovals {
                    group_id: h.group_id,
                    display_name: h.display_name,
                    ad_dn: h.ad_dn,
                    count: h.count,
                    reason: h.reason,
                    held_at_ms: h.held_at_ms,
                })
                .collect();
            Ok(pb::ListHeldDeletionsResponse { deletions, threshold_reason, member_removals })
        })
        .await
        .map(Response::new)
    }

    async fn approve_deletions(
        &self,
        request: Request<pb::DeletionDecisionRequest>,
    ) -> Result<Response<pb::DeletionDecisionResponse>, Status> {
        self.decide_held(request.into_inner().group_ids, true).await
    }

    async fn discard_deletions(
        &self,
        request: Request<pb::DeletionDecisionRequest>,
    ) -> Result<Response<pb::DeletionDecisionResponse>, Status> {
        self.decide_held(request.into_inner().group_ids, false).await
    }

    async fn set_group_drift(
        &self,
        request: Request<pb::SetGroupDriftRequest>,
    ) -> Result<Response<pb::GroupDetail>, Status> {
        let request = request.into_inner();
        let id = request.id.to_ascii_lowercase();
        let drift =
            crate::plan::DriftRequest { mode: drift_mode_request(&request.mode)?, uncontest: request.uncontest };
        tracing::info!(group = %id, ?drift, "operator changed a group's drift settings");
        let wanted = id.clone();
        let detail = self
            .with_engine(move |engine, origin| {
                if group_detail(engine, &wanted)?.is_none() {
                    return Ok(None);
                }
                count_planned(&engine.set_group_drift(&wanted, drift, origin)?);
                group_detail(engine, &wanted)
            })
            .await?;
        detail.map(Response::new).ok_or_else(|| unknown_group(&id))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let request = request.into_inner();
        let id = request.group_id.to_ascii_lowercase();
        let limit = if request.limit == 0 { 100 } else { request.limit.min(10_000) };
        self.with_engine(move |engine, _| {
            let entries = engine
                .store()
                .audit_log(&id, limit)?
                .into_iter()
                .map(|a| pb::AuditEntry {
                    at_ms: a.at_ms,
                    command_id: a.command_id,
                    kind: a.kind,
                    result: a.result,
                    cause: a.cause,
                    detail: a.detail,
                })
                .collect();
            Ok(pb::ListAuditResponse { entries })
        })
        .await
        .map(Response::new)
    }
}

/// `SetGroupDrift`'s mode: Some(None) inherits, None leaves it.
fn drift_mode_request(mode: &str) -> Result<Option<Option<gwb_core::drift::DriftMode>>, Status> {
    match mode.trim() {
        "" => Ok(None),
        "inherit" => Ok(Some(None)),
        other => gwb_core::drift::DriftMode::parse(other).map(|m| Some(Some(m))).ok_or_else(|| {
            Status::invalid_argument(format!("drift mode {other:?} is not one of repair, report, off, inherit"))
        }),
    }
}

fn unknown_group(id: &str) -> Status {
    Status::not_found(format!("no group {id} is known to the planner (has the collector seen it?)"))
}

fn group_detail(engine: &Engine<SqliteStore>, wanted: &str) -> Result<Option<pb::GroupDetail>, EngineError> {
    let Some(detail) = engine.store().group_detail(wanted)? else { return Ok(None) };
    Ok(Some(pb::GroupDetail {
        summary: Some(summary_message(detail.summary)),
        target_type: detail.target_type,
        ad_object_guid: detail.ad_object_guid,
        ad_object_sid: detail.ad_object_sid,
        sam_account_name: detail.sam_account_name,
        members_written: detail.members_written,
        members_skipped: detail.members_skipped.into_iter().map(skipped_message).collect(),
        policy_reason: detail.policy_reason,
        addresses_skipped: detail.addresses_skipped,
        name_clash: detail.name_clash,
        ..drift_detail(engine, wanted)?
    }))
}

/// The drift part of a group's detail: mode in effect, contested mark, history.
fn drift_detail(engine: &Engine<SqliteStore>, wanted: &str) -> Result<pb::GroupDetail, EngineError> {
    let (row, history) = crate::store::DriftQueries::drift_detail(engine.store(), wanted, 20)?;
    let drift_mode = match row.mode {
        Some(mode) => mode.as_str().to_string(),
        None => format!("{} (inherited)", engine.drift_policy().mode.as_str()),
    };
    let drift_history = history
        .into_iter()
        .map(|h| pb::DriftRecord { at_ms: h.at_ms, kind: h.kind, detail: h.detail, action: h.action })
        .collect();
    Ok(pb::GroupDetail {
        drift_mode,
        contested: row.contested.unwrap_or_default(),
        drift_history,
        ..Default::default()
    })
}

fn target_type(value: i32) -> Result<Option<GroupType>, Status> {
    match pb::TargetType::try_from(value) {
        Ok(pb::TargetType::Unspecified) => Ok(None),
        Ok(pb::TargetType::UniversalSecurity) => Ok(Some(GroupType::UniversalSecurity)),
        Ok(pb::TargetType::UniversalDistribution) => Ok(Some(GroupType::UniversalDistribution)),
        Ok(pb::TargetType::UniversalMailEnabledSecurity) => Ok(Some(GroupType::UniversalMailEnabledSecurity)),
        Err(_) => Err(Status::invalid_argument(format!("unknown target type {value}"))),
    }
}

fn summary_message(summary: queries::GroupSummary) -> pb::GroupSummary {
    pb::GroupSummary {
        id: summary.id,
        display_name: summary.display_name,
        state: summary.state,
        ad_dn: summary.ad_dn,
        last_error: summary.last_error,
        members_written: summary.members_written,
        members_skipped: summary.members_skipped,
    }
}

fn skipped_message(skipped: crate::store::SkippedMember) -> pb::SkippedMember {
    pb::SkippedMember { member_id: skipped.member_id, kind: skipped.kind, reason: skipped.reason }
}

/// A service report older than this (six default writer status intervals) is stale:
/// the service is shown unhealthy.
const REPORT_FRESH_MS: i64 = 90_000;
/// A writer stale for this long is no longer listed, when another writer reports:
/// writers scaled down or replaced would otherwise stay as unhealthy rows for ever.
const STALE_WRITER_LISTED_MS: i64 = 300_000;

/// The service reports worth showing: all of them, except writers stale for longer
/// than [`STALE_WRITER_LISTED_MS`] while another writer reports. With no writer
/// reporting, the last one seen stays listed, so "no writer" is visible.
fn listed_services(services: Vec<ServiceRow>, now: i64) -> Vec<ServiceRow> {
    let is_writer = |service: &ServiceRow| service.name.starts_with("gwb-writer/");
    let any_fresh_writer = services.iter().any(|s| is_writer(s) && now - s.last_seen_ms < REPORT_FRESH_MS);
    let last_writer_seen = services.iter().filter(|s| is_writer(s)).map(|s| s.last_seen_ms).max();
    services
        .into_iter()
        .filter(|service| {
            !is_writer(service)
                || now - service.last_seen_ms < STALE_WRITER_LISTED_MS
                || (!any_fresh_writer && Some(service.last_seen_ms) == last_writer_seen)
        })
        .collect()
}

fn status(engine: &Engine<SqliteStore>, now: i64) -> Result<pb::Status, EngineError> {
    let snapshot = engine.store().status()?;
    let last_disable_mode = match snapshot.last_disable_mode.as_deref() {
        Some("delete") => pb::DisableMode::Delete,
        Some("keep") => pb::DisableMode::Keep,
        _ => pb::DisableMode::Unspecified,
    };
    let mut services = vec![pb::ServiceHealth {
        service: "gwb-planner".into(),
        healthy: true,
        version: env!("CARGO_PKG_VERSION").into(),
        detail: String::new(),
        last_seen_ms: now,
    }];
    services.extend(listed_services(snapshot.services, now).into_iter().map(|service| {
        // A service that stopped reporting is not healthy, whatever it said last.
        let fresh = now - service.last_seen_ms < REPORT_FRESH_MS;
        pb::ServiceHealth {
            service: service.name,
            healthy: service.healthy && fresh,
            version: service.version,
            detail: if fresh {
                service.detail
            } else {
                format!("no report for {} s", (now - service.last_seen_ms) / 1000)
            },
            last_seen_ms: service.last_seen_ms,
        }
    }));
    let last_round = snapshot.last_round_completed_ms;
    if last_round > 0 {
        let fresh = now - last_round < 300_000;
        services.push(pb::ServiceHealth {
            service: "gwb-collector".into(),
            healthy: fresh,
            version: String::new(),
            detail: format!("last delta round completed {} s ago", (now - last_round) / 1000),
            last_seen_ms: last_round,
        });
    }
    Ok(pb::Status {
        writeback_enabled: snapshot.writeback_enabled,
        last_disable_mode: last_disable_mode as i32,
        services,
        last_round_completed_ms: last_round,
        groups_by_state: snapshot
            .groups_by_state
            .into_iter()
            .map(|(state, count)| pb::StateCount { state, count })
            .collect(),
        users_known: snapshot.users_known,
        memberships_known: snapshot.memberships_known,
        commands_in_flight: snapshot.commands_in_flight,
        oldest_in_flight_ms: snapshot.oldest_in_flight_planned_ms.map(|t| (now - t).max(0)).unwrap_or(0),
        held_deletions: snapshot.held_deletions,
        held_member_removals: snapshot.held_member_removals,
        recent_errors: snapshot.recent_errors,
        planner_version: env!("CARGO_PKG_VERSION").into(),
        m365_writeback_allowed: !snapshot.exchange.is_empty() && snapshot.mail_refusal.is_empty(),
        exchange: snapshot.exchange,
        m365_writeback_refusal: snapshot.mail_refusal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, last_seen_ms: i64) -> ServiceRow {
        ServiceRow { name: name.into(), healthy: true, version: String::new(), detail: String::new(), last_seen_ms }
    }

    fn names(services: &[ServiceRow]) -> Vec<&str> {
        services.iter().map(|s| s.name.as_str()).collect()
    }

    /// Failed before: a writer scaled away stayed in `gwbctl status` for ever.
    #[test]
    fn writers_that_stopped_reporting_drop_out_while_another_reports() {
        let now = 10_000_000;
        let services = vec![
            report("gwb-writer/a", now - 5_000),
            report("gwb-writer/b", now - 120_000),
            report("gwb-writer/c", now - 400_000),
        ];
        assert_eq!(names(&listed_services(services, now)), ["gwb-writer/a", "gwb-writer/b"], "c has been gone 400 s");
    }

    #[test]
    fn with_no_writer_reporting_the_last_one_seen_stays_listed() {
        let now = 10_000_000;
        let services = vec![report("gwb-writer/a", now - 900_000), report("gwb-writer/b", now - 600_000)];
        assert_eq!(names(&listed_services(services, now)), ["gwb-writer/b"]);
    }
}
