//! The operator's gRPC control API (`gwb.control.v1.Operator`).

use std::sync::{Arc, Mutex};

use rusqlite::{OptionalExtension, params};
use tonic::{Request, Response, Status};

use gwb_proto::control::v1 as pb;
use pb::operator_server::Operator;

use gwb_core::command::GroupType;
use gwb_core::policy::{Decision, GroupOverride};

use crate::coordination::Coordinator;
use crate::engine::{self, Engine, state};
use gwb_runtime::clock::Clock;

pub struct ControlService {
    engine: Arc<Mutex<Engine>>,
    coordinator: Coordinator,
    clock: Clock,
}

impl ControlService {
    pub fn new(engine: Arc<Mutex<Engine>>, coordinator: Coordinator, clock: Clock) -> Self {
        ControlService { engine, coordinator, clock }
    }

    async fn with_engine<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Engine, i64) -> Result<T, engine::EngineError> + Send + 'static,
    ) -> Result<T, Status> {
        let (engine, now_ms) = (self.engine.clone(), self.clock.now_ms());
        tokio::task::spawn_blocking(move || {
            let mut guard =
                engine.lock().map_err(|_| Status::internal("planner state lock poisoned; restart the planner"))?;
            work(&mut guard, now_ms).map_err(|e| Status::internal(format!("planner store: {e}")))
        })
        .await
        .map_err(|e| Status::internal(format!("planner task failed: {e}")))?
    }
}

#[tonic::async_trait]
impl Operator for ControlService {
    async fn get_status(&self, _request: Request<pb::GetStatusRequest>) -> Result<Response<pb::Status>, Status> {
        let mut status = self.with_engine(|engine, now_ms| status(engine, now_ms)).await?;
        // Live answers from the services the planner coordinates, when it knows them.
        status.services.extend(self.coordinator.live_health().await);
        Ok(Response::new(status))
    }

    async fn enable_writeback(
        &self,
        _request: Request<pb::EnableWritebackRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        tracing::info!("operator enabled writeback");
        self.with_engine(|engine, now_ms| {
            engine.set_writeback(true, false, now_ms)?;
            status(engine, now_ms)
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
        self.with_engine(move |engine, now_ms| {
            engine.set_writeback(false, delete, now_ms)?;
            status(engine, now_ms)
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
            let db = engine.db();
            let mut stmt = db.prepare(
                "SELECT g.id, g.display_name, COALESCE(w.state, 'unknown'), COALESCE(w.dn, ''), COALESCE(w.last_error, ''),
                        (SELECT COUNT(*) FROM planned_members p WHERE p.group_id = g.id),
                        (SELECT COUNT(*) FROM skipped_members s WHERE s.group_id = g.id)
                 FROM groups g LEFT JOIN writeback w ON w.group_id = g.id
                 WHERE g.id > ?1 AND (?2 = '' OR COALESCE(w.state, 'unknown') = ?2)
                 ORDER BY g.id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![request.page_token, request.state, page_size as i64 + 1], summary_row)?;
            let mut groups: Vec<pb::GroupSummary> = rows.collect::<Result<_, _>>()?;
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
            .with_engine(move |engine, now_ms| {
                if group_detail(engine, &wanted)?.is_none() {
                    return Ok(Err(unknown_group(&wanted)));
                }
                if let Some(t) = over.group_type
                    && t.needs_exchange()
                    && !engine.has_exchange_schema()?
                {
                    return Ok(Err(Status::failed_precondition(format!(
                        "writing back as {t} needs the Exchange schema in AD, and the writer did not find it in the schema naming context; \
                         choose universalSecurityGroup or extend the AD schema for Exchange first"
                    ))));
                }
                engine.set_override(&wanted, (!clear).then_some(&over), now_ms)?;
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
        let preview = self.with_engine(move |engine, now_ms| engine.preview(&wanted, now_ms)).await?;
        let Some(preview) = preview else { return Err(unknown_group(&id)) };
        let mut plan = pb::GroupPlan {
            id,
            members_to_write: preview.members_to_write,
            commands: preview.commands.into_iter().map(|(kind, detail)| pb::PlannedCommand { kind, detail }).collect(),
            members_skipped: preview
                .skipped
                .into_iter()
                .map(|(member_id, kind, reason)| pb::SkippedMember { member_id, kind, reason })
                .collect(),
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
            let db = engine.db();
            let mut stmt = db.prepare(
                "SELECT w.group_id, COALESCE(g.display_name, ''), COALESCE(w.dn, ''), w.reason, w.updated_ms
                 FROM writeback w LEFT JOIN groups g ON g.id = w.group_id WHERE w.state = ?1 ORDER BY w.group_id",
            )?;
            let rows = stmt.query_map(params![state::HELD], |row| {
                Ok(pb::HeldDeletion {
                    group_id: row.get(0)?,
                    display_name: row.get(1)?,
                    ad_dn: row.get(2)?,
                    reason: row.get(3)?,
                    held_at_ms: row.get(4)?,
                })
            })?;
            let deletions: Vec<pb::HeldDeletion> = rows.collect::<Result<_, _>>()?;
            let threshold_reason =
                if deletions.is_empty() { String::new() } else { engine::meta(db, "held_reason")?.unwrap_or_default() };
            Ok(pb::ListHeldDeletionsResponse { deletions, threshold_reason })
        })
        .await
        .map(Response::new)
    }

    async fn approve_deletions(
        &self,
        request: Request<pb::DeletionDecisionRequest>,
    ) -> Result<Response<pb::DeletionDecisionResponse>, Status> {
        let ids = request.into_inner().group_ids;
        tracing::info!(groups = ids.len(), "operator approved held deletions");
        let affected = self.with_engine(move |engine, now_ms| engine.decide_held(&ids, true, now_ms)).await?;
        Ok(Response::new(pb::DeletionDecisionResponse { affected }))
    }

    async fn discard_deletions(
        &self,
        request: Request<pb::DeletionDecisionRequest>,
    ) -> Result<Response<pb::DeletionDecisionResponse>, Status> {
        let ids = request.into_inner().group_ids;
        tracing::info!(groups = ids.len(), "operator discarded held deletions");
        let affected = self.with_engine(move |engine, now_ms| engine.decide_held(&ids, false, now_ms)).await?;
        Ok(Response::new(pb::DeletionDecisionResponse { affected }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let request = request.into_inner();
        let id = request.group_id.to_ascii_lowercase();
        let limit = if request.limit == 0 { 100 } else { request.limit.min(10_000) };
        self.with_engine(move |engine, _| {
            let mut stmt = engine.db().prepare(
                "SELECT at_ms, command_id, kind, result, cause, detail FROM audit WHERE group_id = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![id, limit], |row| {
                Ok(pb::AuditEntry { at_ms: row.get(0)?, command_id: row.get(1)?, kind: row.get(2)?, result: row.get(3)?, cause: row.get(4)?, detail: row.get(5)? })
            })?;
            Ok(pb::ListAuditResponse { entries: rows.collect::<Result<_, _>>()? })
        })
        .await
        .map(Response::new)
    }
}

fn unknown_group(id: &str) -> Status {
    Status::not_found(format!("no group {id} is known to the planner (has the collector seen it?)"))
}

fn group_detail(engine: &Engine, wanted: &str) -> Result<Option<pb::GroupDetail>, engine::EngineError> {
    let db = engine.db();
    let summary = db
        .query_row(
            "SELECT g.id, g.display_name, COALESCE(w.state, 'unknown'), COALESCE(w.dn, ''), COALESCE(w.last_error, ''),
                    (SELECT COUNT(*) FROM planned_members p WHERE p.group_id = g.id),
                    (SELECT COUNT(*) FROM skipped_members s WHERE s.group_id = g.id)
             FROM groups g LEFT JOIN writeback w ON w.group_id = g.id WHERE g.id = ?1",
            params![wanted],
            summary_row,
        )
        .optional()?;
    let Some(summary) = summary else { return Ok(None) };
    let (target_type, guid, sid, sam, reason): (String, String, String, String, String) = db
        .query_row(
            "SELECT COALESCE(target_type, ''), COALESCE(object_guid, ''), COALESCE(object_sid, ''), COALESCE(sam_account_name, ''), reason
             FROM writeback WHERE group_id = ?1",
            params![wanted],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
        )
        .optional()?
        .unwrap_or_default();
    let members_written: Vec<String> = {
        let mut stmt =
            db.prepare("SELECT ref_key FROM planned_members WHERE group_id = ?1 ORDER BY ref_key LIMIT 10000")?;
        let rows = stmt.query_map(params![wanted], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let members_skipped: Vec<pb::SkippedMember> = {
        let mut stmt = db.prepare("SELECT member_id, member_kind, reason FROM skipped_members WHERE group_id = ?1 ORDER BY member_id LIMIT 10000")?;
        let rows = stmt.query_map(params![wanted], |row| {
            Ok(pb::SkippedMember { member_id: row.get(0)?, kind: row.get(1)?, reason: row.get(2)? })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    Ok(Some(pb::GroupDetail {
        summary: Some(summary),
        target_type,
        ad_object_guid: guid,
        ad_object_sid: sid,
        sam_account_name: sam,
        members_written,
        members_skipped,
        policy_reason: reason,
    }))
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

fn summary_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<pb::GroupSummary> {
    Ok(pb::GroupSummary {
        id: row.get(0)?,
        display_name: row.get(1)?,
        state: row.get(2)?,
        ad_dn: row.get(3)?,
        last_error: row.get(4)?,
        members_written: row.get::<_, i64>(5)? as u64,
        members_skipped: row.get::<_, i64>(6)? as u64,
    })
}

fn status(engine: &Engine, now: i64) -> Result<pb::Status, engine::EngineError> {
    let db = engine.db();
    let enabled = engine::writeback_enabled(db)?;
    let last_disable_mode = match engine::meta(db, "last_disable_mode")?.as_deref() {
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
    {
        let mut stmt = db.prepare("SELECT name, healthy, version, detail, last_seen_ms FROM services ORDER BY name")?;
        let rows = stmt.query_map([], |row| {
            let last_seen: i64 = row.get(4)?;
            let reported_healthy: bool = row.get(1)?;
            // A service that stopped reporting is not healthy, whatever it said last.
            let fresh = now - last_seen < 90_000;
            let detail: String = row.get(3)?;
            Ok(pb::ServiceHealth {
                service: row.get(0)?,
                healthy: reported_healthy && fresh,
                version: row.get(2)?,
                detail: if fresh { detail } else { format!("no report for {} s", (now - last_seen) / 1000) },
                last_seen_ms: last_seen,
            })
        })?;
        services.extend(rows.collect::<Result<Vec<_>, _>>()?);
    }
    let last_round: i64 = engine::meta(db, "last_round_completed_ms")?.and_then(|v| v.parse().ok()).unwrap_or(0);
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
    let groups_by_state = {
        let mut stmt = db.prepare("SELECT state, COUNT(*) FROM writeback GROUP BY state ORDER BY state")?;
        let rows =
            stmt.query_map([], |row| Ok(pb::StateCount { state: row.get(0)?, count: row.get::<_, i64>(1)? as u64 }))?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let count =
        |sql: &str| -> rusqlite::Result<u64> { db.query_row(sql, [], |row| row.get::<_, i64>(0)).map(|n| n as u64) };
    let (in_flight, oldest): (i64, Option<i64>) =
        db.query_row("SELECT COUNT(*), MIN(planned_ms) FROM inflight", [], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let recent_errors = {
        let mut stmt = db.prepare("SELECT message FROM errors ORDER BY id DESC LIMIT 10")?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        rows.collect::<Result<Vec<String>, _>>()?
    };
    Ok(pb::Status {
        writeback_enabled: enabled,
        last_disable_mode: last_disable_mode as i32,
        services,
        last_round_completed_ms: last_round,
        groups_by_state,
        users_known: count("SELECT value FROM counters WHERE name = 'users'")?,
        memberships_known: count("SELECT value FROM counters WHERE name = 'memberships'")?,
        commands_in_flight: in_flight as u64,
        oldest_in_flight_ms: oldest.map(|t| (now - t).max(0)).unwrap_or(0),
        held_deletions: count(&format!("SELECT COUNT(*) FROM writeback WHERE state = '{}'", state::HELD))?,
        recent_errors,
        planner_version: env!("CARGO_PKG_VERSION").into(),
    })
}
