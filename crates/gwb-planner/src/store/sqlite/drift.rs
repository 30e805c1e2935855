//! SQL of drift's store operations ([`crate::store::DriftTx`]).

use rusqlite::{OptionalExtension, params};

use gwb_core::command::MemberRef;
use gwb_core::drift::DriftMode;

use super::{SqliteStore, SqliteTx};
use crate::store::{DriftEvent, DriftGroupRow, DriftHistoryRow, DriftQueries, DriftTx, StoreError};

impl DriftTx for SqliteTx<'_> {
    fn group_by_object_guid(&self, object_guid: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .stmt("SELECT group_id FROM writeback WHERE object_guid = ?1 LIMIT 1")?
            .query_row(params![object_guid.to_ascii_lowercase()], |row| row.get(0))
            .optional()?)
    }

    fn inflight_count(&self, group_id: &str) -> Result<u64, StoreError> {
        let count: i64 = self
            .stmt("SELECT COUNT(*) FROM inflight WHERE group_id = ?1")?
            .query_row(params![group_id], |row| row.get(0))?;
        Ok(count as u64)
    }

    fn written_dn(&self, group_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .stmt("SELECT dn FROM writeback WHERE group_id = ?1")?
            .query_row(params![group_id], |row| row.get::<_, Option<String>>(0))
            .optional()?
            .flatten())
    }

    fn skipped_addresses(&self, group_id: &str) -> Result<Vec<String>, StoreError> {
        let text: Option<String> = self
            .stmt("SELECT addresses_skipped FROM writeback WHERE group_id = ?1")?
            .query_row(params![group_id], |row| row.get(0))
            .optional()?;
        // Stored as `SkippedAddress::describe` lines: "address (held by DN)".
        Ok(text
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split(" (held by ").next())
            .filter(|address| !address.is_empty())
            .map(str::to_string)
            .collect())
    }

    fn held_removal_refs(&self, group_id: &str) -> Result<Vec<MemberRef>, StoreError> {
        let keys = self.strings(
            "SELECT h.ref_key FROM held_member_removals h
             WHERE h.group_num = (SELECT num FROM objects WHERE id = ?1)",
            group_id,
        )?;
        keys.into_iter()
            .map(|key| {
                MemberRef::from_key(&key).ok_or(StoreError::Corrupt { what: "held member removal", detail: key })
            })
            .collect()
    }

    fn planned_refs(&self, group_id: &str) -> Result<Vec<MemberRef>, StoreError> {
        let keys = self.strings(
            "SELECT p.ref_key FROM planned_members p
             WHERE p.group_num = (SELECT num FROM objects WHERE id = ?1)",
            group_id,
        )?;
        keys.into_iter()
            .map(|key| MemberRef::from_key(&key).ok_or(StoreError::Corrupt { what: "planned member", detail: key }))
            .collect()
    }

    fn drift_group(&self, group_id: &str) -> Result<DriftGroupRow, StoreError> {
        let row: Option<(Option<String>, Option<String>)> = self
            .stmt("SELECT mode, contested_reason FROM drift_groups WHERE group_id = ?1")?
            .query_row(params![group_id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let Some((mode, contested)) = row else { return Ok(DriftGroupRow::default()) };
        let mode = match mode {
            Some(text) => {
                Some(DriftMode::parse(&text).ok_or(StoreError::Corrupt { what: "drift mode", detail: text })?)
            }
            None => None,
        };
        Ok(DriftGroupRow { mode, contested })
    }

    fn set_drift_mode(&mut self, group_id: &str, mode: Option<DriftMode>) -> Result<(), StoreError> {
        self.stmt(
            "INSERT INTO drift_groups (group_id, mode) VALUES (?1, ?2)
             ON CONFLICT (group_id) DO UPDATE SET mode = excluded.mode",
        )?
        .execute(params![group_id, mode.map(DriftMode::as_str)])?;
        Ok(())
    }

    fn set_contested(&mut self, group_id: &str, reason: Option<&str>, now_ms: i64) -> Result<(), StoreError> {
        self.stmt(
            "INSERT INTO drift_groups (group_id, contested_reason, contested_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (group_id) DO UPDATE SET contested_reason = excluded.contested_reason,
               contested_ms = excluded.contested_ms",
        )?
        .execute(params![group_id, reason, reason.map(|_| now_ms)])?;
        Ok(())
    }

    fn record_drift(&mut self, event: &DriftEvent<'_>) -> Result<(), StoreError> {
        self.stmt(
            "INSERT INTO drift_events (group_id, at_ms, repeat_key, kind, detail, when_changed, action)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            event.group_id,
            event.at_ms,
            event.repeat_key,
            event.kind,
            event.detail,
            event.when_changed,
            event.action
        ])?;
        Ok(())
    }

    fn drift_count_since(&self, group_id: &str, repeat_key: &str, since_ms: i64) -> Result<u64, StoreError> {
        let count: i64 = self
            .stmt("SELECT COUNT(*) FROM drift_events WHERE group_id = ?1 AND repeat_key = ?2 AND at_ms >= ?3")?
            .query_row(params![group_id, repeat_key, since_ms], |row| row.get(0))?;
        Ok(count as u64)
    }
}

impl DriftQueries for SqliteStore {
    fn drift_detail(&self, group_id: &str, limit: usize) -> Result<(DriftGroupRow, Vec<DriftHistoryRow>), StoreError> {
        let row: Option<(Option<String>, Option<String>)> = self
            .db
            .prepare_cached("SELECT mode, contested_reason FROM drift_groups WHERE group_id = ?1")?
            .query_row(params![group_id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let (mode, contested) = row.unwrap_or_default();
        let mode = match mode {
            Some(text) => {
                Some(DriftMode::parse(&text).ok_or(StoreError::Corrupt { what: "drift mode", detail: text })?)
            }
            None => None,
        };
        let mut stmt = self.db.prepare_cached(
            "SELECT at_ms, kind, detail, action FROM drift_events WHERE group_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let history = stmt
            .query_map(params![group_id, limit as i64], |row| {
                Ok(DriftHistoryRow { at_ms: row.get(0)?, kind: row.get(1)?, detail: row.get(2)?, action: row.get(3)? })
            })?
            .collect::<Result<_, _>>()?;
        Ok((DriftGroupRow { mode, contested }, history))
    }

    fn contested_count(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .db
            .prepare_cached("SELECT COUNT(*) FROM drift_groups WHERE contested_reason IS NOT NULL")?
            .query_row([], |row| row.get(0))?;
        Ok(count as u64)
    }
}
