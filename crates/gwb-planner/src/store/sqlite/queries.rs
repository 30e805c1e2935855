//! The read models of `store::queries` in SQL.

use rusqlite::{Connection, OptionalExtension, Row, params};

use gwb_core::state::WritebackState;

use super::{SqliteStore, get_meta};
use crate::store::queries::{
    AuditRow, Gauges, GroupDetail, GroupSummary, HeldDeletion, HeldMemberRemovals, Queries, ServiceRow, StatusSnapshot,
};
use crate::store::{Meta, SkippedMember, StoreError};

const SUMMARY: &str =
    "SELECT g.id, g.display_name, COALESCE(w.state, 'unknown'), COALESCE(w.dn, ''), COALESCE(w.last_error, ''),
            (SELECT COUNT(*) FROM planned_members p WHERE p.group_num = (SELECT num FROM objects WHERE id = g.id)),
            (SELECT COUNT(*) FROM skipped_members s WHERE s.group_num = (SELECT num FROM objects WHERE id = g.id))
     FROM groups g LEFT JOIN writeback w ON w.group_id = g.id";

fn summary_row(row: &Row<'_>) -> rusqlite::Result<GroupSummary> {
    Ok(GroupSummary {
        id: row.get(0)?,
        display_name: row.get(1)?,
        state: row.get(2)?,
        ad_dn: row.get(3)?,
        last_error: row.get(4)?,
        members_written: row.get::<_, i64>(5)?.max(0) as u64,
        members_skipped: row.get::<_, i64>(6)?.max(0) as u64,
    })
}

pub(super) fn skipped_members(db: &Connection, group_id: &str, limit: usize) -> Result<Vec<SkippedMember>, StoreError> {
    let mut stmt = db.prepare_cached(
        "SELECT o.id, s.member_kind, s.reason FROM skipped_members s JOIN objects o ON o.num = s.member_num
         WHERE s.group_num = (SELECT num FROM objects WHERE id = ?1) ORDER BY o.id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![group_id, limit as i64], |row| {
        Ok(SkippedMember { member_id: row.get(0)?, kind: row.get(1)?, reason: row.get(2)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn count(db: &Connection, sql: &str) -> Result<u64, StoreError> {
    let n: i64 = db.prepare_cached(sql)?.query_row([], |row| row.get(0))?;
    Ok(n.max(0) as u64)
}

impl Queries for SqliteStore {
    fn status(&self) -> Result<StatusSnapshot, StoreError> {
        let db = &self.db;
        let services = {
            let mut stmt =
                db.prepare_cached("SELECT name, healthy, version, detail, last_seen_ms FROM services ORDER BY name")?;
            let rows = stmt.query_map([], |row| {
                Ok(ServiceRow {
                    name: row.get(0)?,
                    healthy: row.get(1)?,
                    version: row.get(2)?,
                    detail: row.get(3)?,
                    last_seen_ms: row.get(4)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let groups_by_state = {
            let mut stmt = db.prepare_cached("SELECT state, COUNT(*) FROM writeback GROUP BY state ORDER BY state")?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)?.max(0) as u64)))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let (in_flight, oldest): (i64, Option<i64>) = db
            .prepare_cached("SELECT COUNT(*), MIN(planned_ms) FROM inflight")?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        let recent_errors = {
            let mut stmt = db.prepare_cached("SELECT message FROM errors ORDER BY id DESC LIMIT 10")?;
            let rows = stmt.query_map([], |row| row.get(0))?;
            rows.collect::<Result<Vec<String>, _>>()?
        };
        let last_round_completed_ms = match get_meta(db, &Meta::LastRoundCompletedMs)? {
            Some(text) => text
                .parse()
                .map_err(|_| StoreError::Corrupt { what: "last_round_completed_ms", detail: text.clone() })?,
            None => 0,
        };
        Ok(StatusSnapshot {
            writeback_enabled: get_meta(db, &Meta::WritebackEnabled)?.as_deref() == Some("1"),
            last_disable_mode: get_meta(db, &Meta::LastDisableMode)?,
            services,
            last_round_completed_ms,
            groups_by_state,
            users_known: count(db, "SELECT value FROM counters WHERE name = 'users'")?,
            memberships_known: count(db, "SELECT value FROM counters WHERE name = 'memberships'")?,
            commands_in_flight: in_flight.max(0) as u64,
            oldest_in_flight_planned_ms: oldest,
            held_deletions: count(db, "SELECT COUNT(*) FROM writeback WHERE state = 'held'")?,
            held_member_removals: count(db, "SELECT COUNT(*) FROM held_member_removals WHERE kept = 0")?,
            recent_errors,
            exchange: get_meta(db, &Meta::ExchangeDescription)?.unwrap_or_default(),
            mail_refusal: get_meta(db, &Meta::MailRefusal)?.unwrap_or_default(),
        })
    }

    fn list_groups(&self, after: &str, state: &str, limit: usize) -> Result<Vec<GroupSummary>, StoreError> {
        let sql = format!(
            "{SUMMARY} WHERE g.id > ?1 AND (?2 = '' OR COALESCE(w.state, 'unknown') = ?2) ORDER BY g.id LIMIT ?3"
        );
        let mut stmt = self.db.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![after, state, limit as i64], summary_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn group_detail(&self, group_id: &str) -> Result<Option<GroupDetail>, StoreError> {
        let db = &self.db;
        let summary = db
            .prepare_cached(&format!("{SUMMARY} WHERE g.id = ?1"))?
            .query_row(params![group_id], summary_row)
            .optional()?;
        let Some(summary) = summary else { return Ok(None) };
        let (target_type, ad_object_guid, ad_object_sid, sam_account_name, policy_reason, addresses_skipped, name_clash) = db
            .prepare_cached(
                "SELECT COALESCE(target_type, ''), COALESCE(object_guid, ''), COALESCE(object_sid, ''), COALESCE(sam_account_name, ''), reason,
                        addresses_skipped, name_clash
                 FROM writeback WHERE group_id = ?1",
            )?
            .query_row(params![group_id], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(6)?,
                ))
            })
            .optional()?
            .unwrap_or_default();
        let members_written = {
            let mut stmt = db.prepare_cached(
                "SELECT ref_key FROM planned_members WHERE group_num = (SELECT num FROM objects WHERE id = ?1)
                 ORDER BY ref_key LIMIT 10000",
            )?;
            let rows = stmt.query_map(params![group_id], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        Ok(Some(GroupDetail {
            summary,
            target_type,
            ad_object_guid,
            ad_object_sid,
            sam_account_name,
            members_written,
            members_skipped: skipped_members(db, group_id, 10_000)?,
            policy_reason,
            addresses_skipped: addresses_skipped.lines().map(str::to_string).collect(),
            name_clash,
        }))
    }

    fn held_deletions(&self) -> Result<(Vec<HeldDeletion>, String), StoreError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT w.group_id, COALESCE(g.display_name, ''), COALESCE(w.dn, ''), w.reason, w.updated_ms
             FROM writeback w LEFT JOIN groups g ON g.id = w.group_id WHERE w.state = ?1 ORDER BY w.group_id",
        )?;
        let rows = stmt.query_map(params![WritebackState::Held.as_str()], |row| {
            Ok(HeldDeletion {
                group_id: row.get(0)?,
                display_name: row.get(1)?,
                ad_dn: row.get(2)?,
                reason: row.get(3)?,
                held_at_ms: row.get(4)?,
            })
        })?;
        let deletions: Vec<HeldDeletion> = rows.collect::<Result<_, _>>()?;
        let reason = if deletions.is_empty() {
            String::new()
        } else {
            get_meta(&self.db, &Meta::HeldReason)?.unwrap_or_default()
        };
        Ok((deletions, reason))
    }

    fn audit_log(&self, group_id: &str, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT at_ms, command_id, kind, result, cause, detail FROM audit WHERE group_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![group_id, limit], |row| {
            Ok(AuditRow {
                at_ms: row.get(0)?,
                command_id: row.get(1)?,
                kind: row.get(2)?,
                result: row.get(3)?,
                cause: row.get(4)?,
                detail: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn held_member_removals(&self) -> Result<Vec<HeldMemberRemovals>, StoreError> {
        // The reason and time of each group's newest held removal: the cause an
        // operator needs to decide.
        let mut stmt = self.db.prepare_cached(
            "SELECT o.id, COALESCE(g.display_name, ''), COALESCE(w.dn, ''), COUNT(*),
                    (SELECT n.reason FROM held_member_removals n WHERE n.group_num = h.group_num AND n.kept = 0
                     ORDER BY n.held_ms DESC LIMIT 1),
                    MAX(h.held_ms)
             FROM held_member_removals h JOIN objects o ON o.num = h.group_num
             LEFT JOIN groups g ON g.id = o.id LEFT JOIN writeback w ON w.group_id = o.id
             WHERE h.kept = 0 GROUP BY h.group_num ORDER BY o.id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(HeldMemberRemovals {
                group_id: row.get(0)?,
                display_name: row.get(1)?,
                ad_dn: row.get(2)?,
                count: row.get::<_, i64>(3)?.max(0) as u64,
                reason: row.get(4)?,
                held_at_ms: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn gauges(&self) -> Result<Gauges, StoreError> {
        let mut stmt = self.db.prepare_cached("SELECT reason, COUNT(*) FROM skipped_members GROUP BY reason")?;
        let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?.max(0) as u64)))?;
        Ok(Gauges {
            held_deletions: count(&self.db, "SELECT COUNT(*) FROM writeback WHERE state = 'held'")?,
            held_member_removals: count(&self.db, "SELECT COUNT(*) FROM held_member_removals WHERE kept = 0")?,
            name_clashes: count(&self.db, "SELECT COUNT(*) FROM writeback WHERE name_clash <> ''")?,
            skipped: rows.collect::<Result<_, _>>()?,
        })
    }

    fn has_exchange_schema(&self) -> Result<bool, StoreError> {
        Ok(get_meta(&self.db, &Meta::HasExchangeSchema)?.as_deref() == Some("1"))
    }

    fn mail_refusal(&self) -> Result<Option<String>, StoreError> {
        Ok(get_meta(&self.db, &Meta::MailRefusal)?.filter(|refusal| !refusal.is_empty()))
    }
}
