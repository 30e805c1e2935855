//! The SQLite schema, its migrations and the connection settings.
//!
//! Everything the planner decides from lives in the store (not in RAM), so memory
//! stays bounded however large the tenant is, and a restart resumes exactly.

use std::path::Path;

use rusqlite::Connection;

/// Ordered schema migrations; `PRAGMA user_version` records how many were applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    display_name TEXT,
    user_principal_name TEXT,
    sid TEXT,
    sync_enabled INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    seen_round TEXT
);

CREATE TABLE groups (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL DEFAULT '',
    description TEXT,
    mail_nickname TEXT,
    mail TEXT,
    mail_enabled INTEGER NOT NULL DEFAULT 0,
    security_enabled INTEGER NOT NULL DEFAULT 0,
    group_types TEXT NOT NULL DEFAULT '[]',
    proxy_addresses TEXT NOT NULL DEFAULT '[]',
    on_premises_sync_enabled INTEGER,
    writeback_enabled INTEGER,
    writeback_group_type TEXT,
    removed TEXT,
    seen_round TEXT
);

CREATE TABLE memberships (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    member_kind TEXT NOT NULL,
    seen_round TEXT,
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;
CREATE INDEX memberships_by_member ON memberships (member_id);

CREATE TABLE group_overrides (
    group_id TEXT PRIMARY KEY,
    enabled INTEGER,
    group_type TEXT,
    parent_dn TEXT
);

-- What the planner has asked the writer to make true, and what the writer reported.
CREATE TABLE writeback (
    group_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    spec TEXT,
    target_type TEXT,
    next_sequence INTEGER NOT NULL DEFAULT 0,
    last_outcome_sequence INTEGER NOT NULL DEFAULT -1,
    dn TEXT,
    object_guid TEXT,
    object_sid TEXT,
    sam_account_name TEXT,
    last_error TEXT,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX writeback_by_state ON writeback (state);

CREATE TABLE planned_members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    ref_key TEXT NOT NULL,
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;

CREATE TABLE skipped_members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    member_kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;

-- Transactional outbox: commands are written with the state change that caused them
-- and published (with confirms) afterwards, so a crash can't lose or invent one.
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id TEXT NOT NULL,
    partition INTEGER NOT NULL,
    payload BLOB NOT NULL
);

CREATE TABLE inflight (
    command_id TEXT PRIMARY KEY,
    group_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    planned_ms INTEGER NOT NULL
);

CREATE TABLE processed_events (event_id TEXT PRIMARY KEY, at_ms INTEGER NOT NULL);

CREATE TABLE services (
    name TEXT PRIMARY KEY,
    healthy INTEGER NOT NULL,
    version TEXT NOT NULL,
    detail TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL
);

CREATE TABLE errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    group_id TEXT,
    message TEXT NOT NULL
);
"#,
    r#"
-- Every AD change planned, with its cause, and what became of it.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    group_id TEXT NOT NULL,
    command_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    result TEXT NOT NULL,
    cause TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_by_group ON audit (group_id, id);

-- Deletions caused by cloud changes wait here until the cycle ends, then pass the
-- deletion threshold or are held for an operator.
CREATE TABLE pending_deletions (
    group_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    requested_ms INTEGER NOT NULL
);
"#,
    r#"
-- W3C trace context of the change that caused each command, so one cloud change is
-- one trace from the collector to the writer.
ALTER TABLE outbox ADD COLUMN headers TEXT NOT NULL DEFAULT '{}';
"#,
    r#"
-- Row counts the status call reports, kept up to date by the engine: counting a
-- million memberships on every status call read the whole table each time.
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO counters SELECT 'memberships', COUNT(*) FROM memberships;
INSERT INTO counters SELECT 'users', COUNT(*) FROM users WHERE deleted = 0;
"#,
    r#"
-- Cloud-caused deletions sent without an operator, for the deletion threshold's window.
CREATE TABLE deletions_sent (group_id TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE INDEX deletions_sent_by_time ON deletions_sent (at_ms);
"#,
    r#"
-- Change detection by GroupSpec::fingerprint (16 hex digits) instead of the spec's
-- Debug text. The old texts match no fingerprint, so a group written before this
-- version sends one upsert (its unchanged spec, a no-op in AD) at its next change,
-- once; nothing else is lost.
ALTER TABLE writeback RENAME COLUMN spec TO spec_fingerprint;
UPDATE writeback SET spec_fingerprint = NULL;
"#,
    r#"
-- Users keyed by their id alone (no rowid): planning a member looks its user up, and
-- that is now one B-tree search instead of two (the id's index, then the row).
CREATE TABLE users_by_id (
    id TEXT PRIMARY KEY,
    display_name TEXT,
    user_principal_name TEXT,
    sid TEXT,
    sync_enabled INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    seen_round TEXT
) WITHOUT ROWID;
INSERT INTO users_by_id SELECT id, display_name, user_principal_name, sid, sync_enabled, deleted, seen_round FROM users;
DROP TABLE users;
ALTER TABLE users_by_id RENAME TO users;
"#,
    r#"
-- Memberships, planned and skipped members keyed by integers instead of two 36-character
-- GUID texts: planning one membership searches and inserts into these tables several
-- times, and comparing GUID texts was a sixth of the planner's work. `objects` gives
-- every group and member id a number once; numbers are never reused.
CREATE TABLE objects (num INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
INSERT INTO objects (id)
  SELECT group_id FROM memberships UNION SELECT member_id FROM memberships
  UNION SELECT group_id FROM planned_members UNION SELECT member_id FROM planned_members
  UNION SELECT group_id FROM skipped_members UNION SELECT member_id FROM skipped_members;

CREATE TABLE memberships_by_num (
    group_num INTEGER NOT NULL,
    member_num INTEGER NOT NULL,
    member_kind TEXT NOT NULL,
    seen_round TEXT,
    PRIMARY KEY (group_num, member_num)
) WITHOUT ROWID;
INSERT INTO memberships_by_num
  SELECT g.num, m.num, x.member_kind, x.seen_round
  FROM memberships x JOIN objects g ON g.id = x.group_id JOIN objects m ON m.id = x.member_id;
DROP TABLE memberships;
ALTER TABLE memberships_by_num RENAME TO memberships;
CREATE INDEX memberships_by_member ON memberships (member_num);

CREATE TABLE planned_by_num (
    group_num INTEGER NOT NULL,
    member_num INTEGER NOT NULL,
    ref_key TEXT NOT NULL,
    PRIMARY KEY (group_num, member_num)
) WITHOUT ROWID;
INSERT INTO planned_by_num
  SELECT g.num, m.num, x.ref_key
  FROM planned_members x JOIN objects g ON g.id = x.group_id JOIN objects m ON m.id = x.member_id;
DROP TABLE planned_members;
ALTER TABLE planned_by_num RENAME TO planned_members;

CREATE TABLE skipped_by_num (
    group_num INTEGER NOT NULL,
    member_num INTEGER NOT NULL,
    member_kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (group_num, member_num)
) WITHOUT ROWID;
INSERT INTO skipped_by_num
  SELECT g.num, m.num, x.member_kind, x.reason
  FROM skipped_members x JOIN objects g ON g.id = x.group_id JOIN objects m ON m.id = x.member_id;
DROP TABLE skipped_members;
ALTER TABLE skipped_by_num RENAME TO skipped_members;
"#,
    // 9: proxy addresses the writer left out because another object holds them.
    r#"
ALTER TABLE writeback ADD COLUMN addresses_skipped TEXT NOT NULL DEFAULT '';
"#,
    // 10: the member-removal threshold: removals held for an operator, and removals
    // sent without one, per group, counted over the deletion window; and the SID of
    // the AD group a converted cloud group came from.
    r#"
CREATE TABLE held_member_removals (
    group_num INTEGER NOT NULL,
    member_num INTEGER NOT NULL,
    ref_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    held_ms INTEGER NOT NULL,
    -- 1: the operator discarded the removal; AD keeps the value, unmanaged (drift
    -- repair leaves it alone).
    kept INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_num, member_num)
) WITHOUT ROWID;
CREATE INDEX held_member_removals_by_member ON held_member_removals (member_num);
CREATE TABLE member_removals_sent (group_num INTEGER NOT NULL, at_ms INTEGER NOT NULL, removals INTEGER NOT NULL);
CREATE INDEX member_removals_sent_by_group ON member_removals_sent (group_num, at_ms);
-- F3: the SID of the AD group a cloud group came from (onPremisesSecurityIdentifier).
ALTER TABLE groups ADD COLUMN on_premises_sid TEXT;
-- The wanted name held by another object, as the writer last reported it.
ALTER TABLE writeback ADD COLUMN name_clash TEXT NOT NULL DEFAULT '';
"#,
    // 11: drift (issue 18). A group's mode override and contested mark; every drift
    // found, for the contested rule's window and `gwbctl group`; observations name a
    // group by objectGUID and are ignored while its commands are in flight.
    r#"
CREATE TABLE drift_groups (
    group_id TEXT PRIMARY KEY,
    mode TEXT,
    contested_reason TEXT,
    contested_ms INTEGER
);
CREATE TABLE drift_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    repeat_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    when_changed TEXT NOT NULL,
    action TEXT NOT NULL
);
CREATE INDEX drift_events_by_group ON drift_events (group_id, repeat_key, at_ms);
CREATE INDEX writeback_by_guid ON writeback (object_guid);
CREATE INDEX inflight_by_group ON inflight (group_id);
"#,
];

pub(super) fn open(path: &Path) -> rusqlite::Result<Connection> {
    let mut db = Connection::open(path)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a commit survives a process crash; only an OS crash can
    // lose the last transactions, which the at-least-once bus redelivers anyway.
    db.pragma_update(None, "synchronous", "NORMAL")?;
    // 64 MB of page cache: the hot part of a million-membership store, well inside
    // the planner's memory budget. Savepoint journals stay in memory.
    db.pragma_update(None, "cache_size", -64_000)?;
    db.pragma_update(None, "temp_store", "MEMORY")?;
    // Every statement the store runs stays prepared: rusqlite keeps 16 by default,
    // fewer than the store has, and planning one membership then re-prepared some of
    // its statements each time.
    db.set_prepared_statement_cache_capacity(128);
    migrate(&mut db)?;
    Ok(db)
}

fn migrate(db: &mut Connection) -> rusqlite::Result<()> {
    let applied: usize = db.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = db.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "planner store migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store written by the version before fingerprints (5 migrations) opens, keeps
    /// its users and writeback rows, and forgets only the old spec texts.
    #[test]
    fn a_store_from_before_fingerprints_is_migrated_in_place() {
        let dir = std::env::temp_dir().join(format!("gwb-migrate-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("planner.db");
        {
            let db = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..5] {
                db.execute_batch(sql).unwrap();
            }
            db.pragma_update(None, "user_version", 5).unwrap();
            db.execute_batch(
                "INSERT INTO users (id, sid, sync_enabled, seen_round) VALUES ('u1', 'S-1-5-21-1-2-3-1001', 1, 'r1');
                 INSERT INTO writeback (group_id, state, spec, target_type, updated_ms)
                   VALUES ('g1', 'written', 'GroupSpec { object_id: \"g1\" }', 'universalSecurityGroup', 7);",
            )
            .unwrap();
        }
        let db = open(&path).unwrap();
        let version: usize = db.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let user: (String, i64, String) = db
            .query_row("SELECT sid, sync_enabled, seen_round FROM users WHERE id = 'u1'", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .unwrap();
        assert_eq!(user, ("S-1-5-21-1-2-3-1001".to_string(), 1, "r1".to_string()));
        let row: (String, Option<String>, String) = db
            .query_row("SELECT state, spec_fingerprint, target_type FROM writeback WHERE group_id = 'g1'", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .unwrap();
        assert_eq!(row, ("written".to_string(), None, "universalSecurityGroup".to_string()));
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A store written by the version before integer keys (7 migrations) opens with
    /// every membership, planned and skipped member, now under the ids' numbers.
    #[test]
    fn a_store_from_before_integer_keys_is_migrated_in_place() {
        let dir = std::env::temp_dir().join(format!("gwb-migrate-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("planner.db");
        {
            let db = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..7] {
                db.execute_batch(sql).unwrap();
            }
            db.pragma_update(None, "user_version", 7).unwrap();
            db.execute_batch(
                "INSERT INTO memberships (group_id, member_id, member_kind, seen_round) VALUES
                   ('g1', 'u1', 'user', 'r1'), ('g1', 'u2', 'user', NULL), ('g2', 'g1', 'group', 'r2');
                 INSERT INTO planned_members (group_id, member_id, ref_key) VALUES
                   ('g1', 'u1', 'sid:S-1-5-21-1-2-3-1001'), ('g1', 'gone', 'sid:S-1-5-21-1-2-3-1009');
                 INSERT INTO skipped_members (group_id, member_id, member_kind, reason) VALUES
                   ('g1', 'u2', 'user', 'cloud-only user');",
            )
            .unwrap();
        }
        let db = open(&path).unwrap();
        let version: usize = db.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let rows = |sql: &str| -> Vec<Vec<Option<String>>> {
            let mut stmt = db.prepare(sql).unwrap();
            let width = stmt.column_count();
            stmt.query_map([], |row| (0..width).map(|i| row.get::<_, Option<String>>(i)).collect())
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let text = |values: &[Option<&str>]| values.iter().map(|v| v.map(str::to_string)).collect::<Vec<_>>();
        assert_eq!(
            rows(
                "SELECT g.id, m.id, x.member_kind, x.seen_round FROM memberships x
                 JOIN objects g ON g.num = x.group_num JOIN objects m ON m.num = x.member_num ORDER BY g.id, m.id"
            ),
            vec![
                text(&[Some("g1"), Some("u1"), Some("user"), Some("r1")]),
                text(&[Some("g1"), Some("u2"), Some("user"), None]),
                text(&[Some("g2"), Some("g1"), Some("group"), Some("r2")]),
            ]
        );
        assert_eq!(
            rows(
                "SELECT g.id, m.id, x.ref_key FROM planned_members x
                 JOIN objects g ON g.num = x.group_num JOIN objects m ON m.num = x.member_num ORDER BY m.id"
            ),
            vec![
                text(&[Some("g1"), Some("gone"), Some("sid:S-1-5-21-1-2-3-1009")]),
                text(&[Some("g1"), Some("u1"), Some("sid:S-1-5-21-1-2-3-1001")]),
            ]
        );
        assert_eq!(
            rows(
                "SELECT g.id, m.id, x.member_kind, x.reason FROM skipped_members x
                 JOIN objects g ON g.num = x.group_num JOIN objects m ON m.num = x.member_num"
            ),
            vec![text(&[Some("g1"), Some("u2"), Some("user"), Some("cloud-only user")])]
        );
        let objects: i64 = db.query_row("SELECT COUNT(*) FROM objects", [], |row| row.get(0)).unwrap();
        assert_eq!(objects, 5, "g1, g2, u1, u2 and gone, once each");
        drop(db);
        // The store reads what was migrated, and numbers new ids after the old ones.
        let mut store = super::super::SqliteStore::open(&path).unwrap();
        let mut tx = crate::store::Store::transaction(&mut store).unwrap();
        use crate::store::StoreTx as _;
        let known = tx.known_member("g1", "u1").unwrap();
        assert_eq!(known.kind, Some(gwb_core::members::MemberKind::User));
        assert_eq!(known.planned, Some(gwb_core::command::MemberRef::Sid("S-1-5-21-1-2-3-1001".into())));
        assert_eq!(tx.known_member("g1", "u2").unwrap().skipped.as_deref(), Some("cloud-only user"));
        assert_eq!(tx.planned_member_ids("g1").unwrap().len(), 2);
        assert!(tx.upsert_membership("g1", "u3", gwb_core::members::MemberKind::User, "r3").unwrap());
        assert!(!tx.upsert_membership("g1", "u1", gwb_core::members::MemberKind::User, "r3").unwrap());
        assert_eq!(tx.stale_memberships("r3").unwrap(), Vec::<(String, String)>::new(), "g1 was not seen in r3");
        tx.commit().unwrap();
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
