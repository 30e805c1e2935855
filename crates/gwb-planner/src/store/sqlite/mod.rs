//! The SQLite store: the only planner code with SQL (with `queries` and
//! `migrations`). WAL mode, prepared statements cached per connection.

mod drift;
mod migrations;
mod queries;

use std::cell::{RefCell, RefMut};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;

use rusqlite::{CachedStatement, Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use gwb_core::command::GroupType;
use gwb_core::command::{AppliedGroup, MemberRef};
use gwb_core::event::Resource;
use gwb_core::members::{MemberKind, UserAnchor};
use gwb_core::policy::{CloudGroup, GroupOverride};
use gwb_core::state::WritebackState;

use super::{
    AuditEntry, Counter, KnownMember, Meta, OutboxRow, PlannedCommand, ServiceReport, SkippedMember, Store, StoreError,
    StoreTx, UserRow, WritebackRow,
};

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Backend(Box::new(error))
    }
}

pub struct SqliteStore {
    db: Connection,
    /// The numbers of object ids (`objects`), kept between transactions: a row of
    /// `objects` is never changed or deleted, so a number once committed stays right.
    /// Planning names each member in every group that holds it (a user is in ten
    /// groups on average in the throughput scenario), and looking its number up again
    /// in each transaction was a tenth of the planner's work.
    nums: RefCell<NumCache>,
}

/// Object numbers by id, bounded: [`NUMS_KEPT`] entries (about 10 MB) cover the
/// objects of a million-membership tenant; past that it starts again empty.
#[derive(Default)]
struct NumCache {
    nums: FastMap<String, i64>,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The most object numbers kept at hand.
const NUMS_KEPT: usize = 250_000;

impl NumCache {
    fn get(&self, id: &str) -> Option<i64> {
        self.nums.get(id).copied()
    }

    fn insert(&mut self, id: &str, num: i64) {
        if self.nums.len() >= NUMS_KEPT {
            self.nums.clear();
        }
        self.nums.insert(id.to_string(), num);
    }
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the store at `path`; `:memory:` is a
    /// private in-memory store.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(SqliteStore { db: migrations::open(path)?, nums: RefCell::default() })
    }

    /// Row counts of a table, for tests that check what planning left behind.
    #[cfg(test)]
    pub fn count_rows(&self, table: &str, filter: &str) -> u64 {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE {filter}");
        self.db.query_row(&sql, [], |row| row.get::<_, i64>(0)).unwrap() as u64
    }

    /// Leaves every writeback row without a fingerprint, as migration 6 leaves the
    /// rows written before it.
    #[cfg(test)]
    pub fn forget_fingerprints(&self) {
        self.db.execute("UPDATE writeback SET spec_fingerprint = NULL", []).unwrap();
    }

    /// A counter's value, for tests.
    #[cfg(test)]
    pub fn counter(&self, counter: Counter) -> i64 {
        self.db
            .query_row("SELECT value FROM counters WHERE name = ?1", params![counter_name(counter)], |row| row.get(0))
            .unwrap()
    }
}

impl Store for SqliteStore {
    type Tx<'a> = SqliteTx<'a>;

    fn transaction(&mut self) -> Result<SqliteTx<'_>, StoreError> {
        // `&mut self` makes this the connection's only transaction, as
        // `Connection::transaction` would; the shared borrow lets the transaction's
        // statements live beside it.
        let conn: &Connection = &self.db;
        Ok(SqliteTx {
            statements: RefCell::new(FastMap::default()),
            nums: Interned { cache: &self.nums, given: RefCell::new(Vec::new()) },
            tx: Transaction::new_unchecked(conn, TransactionBehavior::Deferred)?,
            conn,
        })
    }

    fn outbox_batch(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        outbox_head(&self.db, limit)
    }

    fn outbox_published(&mut self, up_to_seq: i64) -> Result<(), StoreError> {
        self.db.prepare_cached("DELETE FROM outbox WHERE seq <= ?1")?.execute(params![up_to_seq])?;
        Ok(())
    }

    fn prune_processed(&mut self, before_ms: i64) -> Result<(), StoreError> {
        self.db.execute("DELETE FROM processed_events WHERE at_ms < ?1", params![before_ms])?;
        Ok(())
    }
}

pub struct SqliteTx<'a> {
    /// The statements this transaction used, by the address of their SQL text (each
    /// is a literal): rusqlite's statement cache hashes and compares the whole text
    /// on every use and again when the statement is returned, which cost more than
    /// some of the statements themselves. They go back to that cache at the end.
    /// Declared first, so they are dropped before the transaction ends.
    statements: RefCell<FastMap<usize, CachedStatement<'a>>>,
    nums: Interned<'a>,
    tx: Transaction<'a>,
    conn: &'a Connection,
}

/// The store's object numbers as one transaction sees them: the numbers it gives
/// are cached at once (planning a group's slice names each new member three times)
/// and taken out again if the transaction does not commit, so a rollback never
/// leaves a number that no row holds.
struct Interned<'a> {
    cache: &'a RefCell<NumCache>,
    /// Ids given a number in this transaction.
    given: RefCell<Vec<String>>,
}

impl Interned<'_> {
    fn committed(self) {
        self.given.borrow_mut().clear();
    }
}

impl Drop for Interned<'_> {
    fn drop(&mut self) {
        let given = self.given.get_mut();
        if !given.is_empty() {
            let mut cache = self.cache.borrow_mut();
            for id in given.drain(..) {
                cache.nums.remove(&id);
            }
        }
    }
}

impl<'a> SqliteTx<'a> {
    /// The number of object `id`, None when it was never given one (then no row
    /// names it).
    fn num(&self, id: &str) -> Result<Option<i64>, StoreError> {
        if let Some(num) = self.nums.cache.borrow().get(id) {
            return Ok(Some(num));
        }
        let num: Option<i64> =
            self.stmt("SELECT num FROM objects WHERE id = ?1")?.query_row(params![id], |row| row.get(0)).optional()?;
        if let Some(num) = num {
            self.nums.cache.borrow_mut().insert(id, num);
        }
        Ok(num)
    }

    /// The number of object `id`, given now if it has none.
    fn intern(&self, id: &str) -> Result<i64, StoreError> {
        if let Some(num) = self.num(id)? {
            return Ok(num);
        }
        let num: i64 = self
            .stmt("INSERT INTO objects (id) VALUES (?1) RETURNING num")?
            .query_row(params![id], |row| row.get(0))?;
        self.nums.given.borrow_mut().push(id.to_string());
        self.nums.cache.borrow_mut().insert(id, num);
        Ok(num)
    }

    /// The numbers of a (group, member) pair, None when either has none.
    fn pair(&self, group_id: &str, member_id: &str) -> Result<Option<(i64, i64)>, StoreError> {
        Ok(match (self.num(group_id)?, self.num(member_id)?) {
            (Some(group), Some(member)) => Some((group, member)),
            _ => None,
        })
    }

    fn stmt(&self, sql: &'static str) -> Result<RefMut<'_, CachedStatement<'a>>, StoreError> {
        let key = sql.as_ptr() as usize;
        let mut statements = self.statements.borrow_mut();
        if let Entry::Vacant(slot) = statements.entry(key) {
            slot.insert(self.conn.prepare_cached(sql)?);
        }
        RefMut::filter_map(statements, |statements| statements.get_mut(&key))
            .map_err(|_| StoreError::Corrupt { what: "statement cache", detail: sql.to_string() })
    }

    fn strings(&self, sql: &'static str, param: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.stmt(sql)?;
        let rows = stmt.query_map(params![param], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The keys of the `meta` table. A full round's key keeps the number its resource had
/// on the wire when the key was introduced, so a round in progress survives an upgrade.
fn meta_key(key: &Meta) -> &'static str {
    match key {
        Meta::WritebackEnabled => "writeback_enabled",
        Meta::LastDisableMode => "last_disable_mode",
        Meta::HasExchangeSchema => "has_exchange_schema",
        Meta::ExchangeDescription => "exchange_description",
        Meta::MailRefusal => "mail_refusal",
        Meta::HeldReason => "held_reason",
        Meta::LastRoundCompletedMs => "last_round_completed_ms",
        Meta::FullRound(Resource::Users) => "full_round.1",
        Meta::FullRound(Resource::Groups) => "full_round.2",
    }
}

fn counter_name(counter: Counter) -> &'static str {
    match counter {
        Counter::Memberships => "memberships",
        Counter::Users => "users",
    }
}

fn get_meta(db: &Connection, key: &Meta) -> Result<Option<String>, StoreError> {
    Ok(db
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row(params![meta_key(key)], |row| row.get(0))
        .optional()?)
}

fn state_from(text: &str) -> Result<WritebackState, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt { what: "writeback state", detail: text.to_string() })
}

/// `IN (...)` over state spellings: the states are a closed set of literals, so
/// they can be spelled into the statement (which is then cached per set).
fn state_list(states: &[WritebackState]) -> String {
    states.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ")
}

fn outbox_head(db: &Connection, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
    let mut stmt =
        db.prepare_cached("SELECT seq, partition, payload, command_id, headers FROM outbox ORDER BY seq LIMIT ?1")?;
    let rows = stmt.query_map(params![limit as i64], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get::<_, String>(4)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, partition, payload, command_id, headers) = row?;
        // A trace context that does not parse only loses the trace link: it must
        // never hold back a command (nor those queued after it).
        let headers = serde_json::from_str(&headers).unwrap_or_default();
        out.push(OutboxRow { seq, partition, payload, command_id, headers });
    }
    Ok(out)
}

fn json_list(row: &Row<'_>, index: usize, what: &'static str) -> rusqlite::Result<Vec<String>> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, format!("{what}: {e}").into())
    })
}

/// A [`KnownMember`] as read, before a planned value that does not parse is refused.
struct RawKnown {
    kind: Option<MemberKind>,
    /// The planned value, or its stored key when that is not one.
    planned: Option<Result<MemberRef, String>>,
    user: Option<UserAnchor>,
    written_guid: Option<String>,
    skipped: Option<String>,
}

/// Column `index` as text without copying it: this runs once per membership planned,
/// and an allocation per text column cost more than reading it.
fn text_ref<'r>(row: &'r Row<'_>, index: usize) -> rusqlite::Result<Option<&'r str>> {
    row.get_ref(index)?
        .as_str_or_null()
        .map_err(|error| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(error)))
}

/// Columns `at..at + 8` of the known-member queries: kind, planned value, whether
/// the user is known, its sid, sync flag and deletion, the written group's GUID, and
/// the skip reason.
fn known_row(row: &Row<'_>, at: usize) -> rusqlite::Result<RawKnown> {
    let user = if row.get::<_, bool>(at + 2)? {
        Some(UserAnchor {
            on_premises_sid: row.get(at + 3)?,
            on_premises_sync_enabled: row.get(at + 4)?,
            deleted: row.get::<_, Option<bool>>(at + 5)?.unwrap_or(false),
        })
    } else {
        None
    };
    let planned = text_ref(row, at + 1)?.map(|key| MemberRef::from_key(key).ok_or_else(|| key.to_string()));
    Ok(RawKnown {
        kind: text_ref(row, at)?.map(MemberKind::from_str_lossy),
        planned,
        user,
        written_guid: row.get(at + 6)?,
        skipped: row.get(at + 7)?,
    })
}

impl RawKnown {
    fn into_known(self) -> Result<KnownMember, StoreError> {
        let planned = match self.planned {
            Some(Ok(reference)) => Some(reference),
            Some(Err(key)) => return Err(StoreError::Corrupt { what: "planned member value", detail: key }),
            None => None,
        };
        Ok(KnownMember {
            kind: self.kind,
            planned,
            user: self.user,
            written_guid: self.written_guid,
            skipped: self.skipped,
        })
    }
}

impl StoreTx for SqliteTx<'_> {
    fn commit(self) -> Result<(), StoreError> {
        let SqliteTx { statements, tx, nums, .. } = self;
        drop(statements);
        tx.commit()?;
        nums.committed();
        Ok(())
    }

    fn mark_processed(&mut self, event_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        Ok(self
            .stmt("INSERT OR IGNORE INTO processed_events (event_id, at_ms) VALUES (?1, ?2)")?
            .execute(params![event_id, now_ms])?
            == 1)
    }

    fn meta(&self, key: &Meta) -> Result<Option<String>, StoreError> {
        let value = self
            .stmt("SELECT value FROM meta WHERE key = ?1")?
            .query_row(params![meta_key(key)], |row| row.get(0))
            .optional()?;
        Ok(value)
    }

    fn set_meta(&mut self, key: &Meta, value: &str) -> Result<(), StoreError> {
        self.stmt(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )?
        .execute(params![meta_key(key), value])?;
        Ok(())
    }

    fn delete_meta(&mut self, key: &Meta) -> Result<(), StoreError> {
        self.stmt("DELETE FROM meta WHERE key = ?1")?.execute(params![meta_key(key)])?;
        Ok(())
    }

    fn add_to_counter(&mut self, counter: Counter, delta: i64) -> Result<(), StoreError> {
        if delta != 0 {
            self.stmt("UPDATE counters SET value = value + ?2 WHERE name = ?1")?
                .execute(params![counter_name(counter), delta])?;
        }
        Ok(())
    }

    fn record_service(&mut self, report: &ServiceReport) -> Result<(), StoreError> {
        self.stmt(
            "INSERT INTO services (name, healthy, version, detail, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET healthy = excluded.healthy, version = excluded.version, detail = excluded.detail, last_seen_ms = excluded.last_seen_ms",
        )?
        .execute(params![report.name, report.healthy, report.version, report.detail, report.last_seen_ms])?;
        Ok(())
    }

    fn user_anchor(&self, user_id: &str) -> Result<Option<UserAnchor>, StoreError> {
        Ok(self
            .stmt("SELECT sid, sync_enabled, deleted FROM users WHERE id = ?1")?
            .query_row(params![user_id], |row| {
                Ok(UserAnchor {
                    on_premises_sid: row.get(0)?,
                    on_premises_sync_enabled: row.get(1)?,
                    deleted: row.get(2)?,
                })
            })
            .optional()?)
    }

    fn upsert_user(&mut self, user: &UserRow, round: &str) -> Result<(), StoreError> {
        self.stmt(
            "INSERT INTO users (id, display_name, user_principal_name, sid, sync_enabled, deleted, seen_round)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)
             ON CONFLICT(id) DO UPDATE SET display_name = excluded.display_name, user_principal_name = excluded.user_principal_name,
               sid = excluded.sid, sync_enabled = excluded.sync_enabled, deleted = 0, seen_round = excluded.seen_round",
        )?
        .execute(params![user.id, user.display_name, user.user_principal_name, user.sid, user.sync_enabled, round])?;
        Ok(())
    }

    fn mark_user_deleted(&mut self, user_id: &str) -> Result<(), StoreError> {
        self.stmt("INSERT INTO users (id, deleted) VALUES (?1, 1) ON CONFLICT(id) DO UPDATE SET deleted = 1")?
            .execute(params![user_id])?;
        Ok(())
    }

    fn users_not_seen_in(&self, round: &str) -> Result<Vec<String>, StoreError> {
        self.strings("SELECT id FROM users WHERE deleted = 0 AND (seen_round IS NULL OR seen_round <> ?1)", round)
    }

    fn group_is_removed(&self, group_id: &str) -> Result<bool, StoreError> {
        let removed: Option<Option<String>> = self
            .stmt("SELECT removed FROM groups WHERE id = ?1")?
            .query_row(params![group_id], |row| row.get(0))
            .optional()?;
        Ok(matches!(removed, Some(Some(_))))
    }

    fn upsert_group(&mut self, group: &CloudGroup, round: &str) -> Result<(), StoreError> {
        let json = |list: &[String]| {
            serde_json::to_string(list).map_err(|e| StoreError::Corrupt { what: "group list", detail: e.to_string() })
        };
        self.stmt(
            "INSERT INTO groups (id, display_name, description, mail_nickname, mail, mail_enabled, security_enabled, group_types,
                                 proxy_addresses, on_premises_sync_enabled, writeback_enabled, writeback_group_type, removed, seen_round,
                                 on_premises_sid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL, ?13, ?14)
             ON CONFLICT(id) DO UPDATE SET display_name = excluded.display_name, description = excluded.description,
               mail_nickname = excluded.mail_nickname, mail = excluded.mail, mail_enabled = excluded.mail_enabled,
               security_enabled = excluded.security_enabled, group_types = excluded.group_types, proxy_addresses = excluded.proxy_addresses,
               on_premises_sync_enabled = excluded.on_premises_sync_enabled, writeback_enabled = excluded.writeback_enabled,
               writeback_group_type = excluded.writeback_group_type, removed = NULL, seen_round = excluded.seen_round,
               on_premises_sid = excluded.on_premises_sid",
        )?
        .execute(params![
            group.id,
            group.display_name,
            group.description,
            group.mail_nickname,
            group.mail,
            group.mail_enabled,
            group.security_enabled,
            json(&group.group_types)?,
            json(&group.proxy_addresses)?,
            group.on_premises_sync_enabled,
            group.writeback_enabled,
            group.writeback_group_type,
            round,
            group.on_premises_sid,
        ])?;
        Ok(())
    }

    fn mark_group_removed(&mut self, group_id: &str, hard: bool) -> Result<(), StoreError> {
        self.stmt(
            "INSERT INTO groups (id, removed) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET removed = excluded.removed",
        )?
        .execute(params![group_id, if hard { "deleted" } else { "changed" }])?;
        Ok(())
    }

    fn cloud_group(&self, group_id: &str) -> Result<Option<CloudGroup>, StoreError> {
        Ok(self.stmt(
                "SELECT id, display_name, description, mail_nickname, mail, mail_enabled, security_enabled, group_types, proxy_addresses,
                        on_premises_sync_enabled, writeback_enabled, writeback_group_type, on_premises_sid
                 FROM groups WHERE id = ?1 AND removed IS NULL",
            )?
            .query_row(params![group_id], |row| {
                Ok(CloudGroup {
                    id: row.get(0)?,
                    display_name: row.get(1)?,
                    description: row.get(2)?,
                    mail_nickname: row.get(3)?,
                    mail: row.get(4)?,
                    mail_enabled: row.get(5)?,
                    security_enabled: row.get(6)?,
                    group_types: json_list(row, 7, "group_types")?,
                    proxy_addresses: json_list(row, 8, "proxy_addresses")?,
                    on_premises_sync_enabled: row.get(9)?,
                    writeback_enabled: row.get(10)?,
                    writeback_group_type: row.get(11)?,
                    on_premises_sid: row.get(12)?,
                })
            })
            .optional()?)
    }

    fn present_group_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.stmt("SELECT id FROM groups WHERE removed IS NULL ORDER BY id")?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn groups_not_seen_in(&self, round: &str) -> Result<Vec<String>, StoreError> {
        self.strings("SELECT id FROM groups WHERE removed IS NULL AND (seen_round IS NULL OR seen_round <> ?1)", round)
    }

    fn group_override(&self, group_id: &str) -> Result<GroupOverride, StoreError> {
        Ok(self
            .stmt("SELECT enabled, group_type, parent_dn FROM group_overrides WHERE group_id = ?1")?
            .query_row(params![group_id], |row| {
                let group_type: Option<String> = row.get(1)?;
                Ok(GroupOverride {
                    enabled: row.get(0)?,
                    group_type: group_type.as_deref().and_then(GroupType::from_graph_name),
                    parent_dn: row.get(2)?,
                })
            })
            .optional()?
            .unwrap_or_default())
    }

    fn set_group_override(&mut self, group_id: &str, over: Option<&GroupOverride>) -> Result<(), StoreError> {
        match over {
            Some(over) => {
                self.stmt(
                    "INSERT INTO group_overrides (group_id, enabled, group_type, parent_dn) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(group_id) DO UPDATE SET enabled = excluded.enabled, group_type = excluded.group_type, parent_dn = excluded.parent_dn",
                )?
                .execute(params![group_id, over.enabled, over.group_type.map(|t| t.graph_name()), over.parent_dn])?;
            }
            None => {
                self.stmt("DELETE FROM group_overrides WHERE group_id = ?1")?.execute(params![group_id])?;
            }
        }
        Ok(())
    }

    fn upsert_membership(
        &mut self,
        group_id: &str,
        member_id: &str,
        kind: MemberKind,
        round: &str,
    ) -> Result<bool, StoreError> {
        // Insert, else update: two plain statements, so the caller's count is exact
        // and SQLite needs no statement journal for an upsert.
        let (group, member) = (self.intern(group_id)?, self.intern(member_id)?);
        let values = params![group, member, kind.as_str(), round];
        let inserted = self.stmt(
                "INSERT OR IGNORE INTO memberships (group_num, member_num, member_kind, seen_round) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(values)?
            == 1;
        if !inserted {
            self.stmt(
                "UPDATE memberships SET member_kind = ?3, seen_round = ?4 WHERE group_num = ?1 AND member_num = ?2",
            )?
            .execute(values)?;
        }
        Ok(inserted)
    }

    fn remove_membership(&mut self, group_id: &str, member_id: &str) -> Result<bool, StoreError> {
        let Some((group, member)) = self.pair(group_id, member_id)? else { return Ok(false) };
        Ok(self
            .stmt("DELETE FROM memberships WHERE group_num = ?1 AND member_num = ?2")?
            .execute(params![group, member])?
            > 0)
    }

    fn remove_group_memberships(&mut self, group_id: &str) -> Result<u64, StoreError> {
        let Some(group) = self.num(group_id)? else { return Ok(0) };
        Ok(self.stmt("DELETE FROM memberships WHERE group_num = ?1")?.execute(params![group])? as u64)
    }

    fn membership_kind(&self, group_id: &str, member_id: &str) -> Result<Option<MemberKind>, StoreError> {
        let Some((group, member)) = self.pair(group_id, member_id)? else { return Ok(None) };
        let kind: Option<String> = self
            .stmt("SELECT member_kind FROM memberships WHERE group_num = ?1 AND member_num = ?2")?
            .query_row(params![group, member], |row| row.get(0))
            .optional()?;
        Ok(kind.as_deref().map(MemberKind::from_str_lossy))
    }

    fn stale_memberships(&self, round: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.stmt(
            "SELECT g.id, mo.id FROM groups g JOIN objects go ON go.id = g.id
               JOIN memberships m ON m.group_num = go.num JOIN objects mo ON mo.num = m.member_num
             WHERE g.seen_round = ?1 AND (m.seen_round IS NULL OR m.seen_round <> ?1)",
        )?;
        let rows = stmt.query_map(params![round], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn known_member(&self, group_id: &str, member_id: &str) -> Result<KnownMember, StoreError> {
        // Without numbers the pair has no rows: NULL numbers match none, and the
        // user is still looked up by its id.
        let (group, member) = match self.pair(group_id, member_id)? {
            Some((group, member)) => (Some(group), Some(member)),
            None => (None, None),
        };
        self.stmt(
            "SELECT m.member_kind, p.ref_key, u.id IS NOT NULL, u.sid, u.sync_enabled, u.deleted,
                    CASE WHEN m.member_kind = 'group' THEN
                      (SELECT w.object_guid FROM writeback w WHERE w.group_id = k.member_id AND w.state IN ('pending', 'written'))
                    END,
                    s.reason
             FROM (SELECT ?1 AS group_num, ?2 AS member_num, ?3 AS member_id) k
             LEFT JOIN memberships m ON m.group_num = k.group_num AND m.member_num = k.member_num
             LEFT JOIN planned_members p ON p.group_num = k.group_num AND p.member_num = k.member_num
             LEFT JOIN users u ON u.id = k.member_id
             LEFT JOIN skipped_members s ON s.group_num = k.group_num AND s.member_num = k.member_num",
        )?
        .query_row(params![group, member, member_id], |row| known_row(row, 0))?
        .into_known()
    }

    fn known_members_of(&self, group_id: &str) -> Result<Vec<(String, KnownMember)>, StoreError> {
        let Some(group) = self.num(group_id)? else { return Ok(Vec::new()) };
        let mut stmt = self.stmt(
            "SELECT m.member_kind, p.ref_key, u.id IS NOT NULL, u.sid, u.sync_enabled, u.deleted,
                    CASE WHEN m.member_kind = 'group' THEN
                      (SELECT w.object_guid FROM writeback w WHERE w.group_id = mo.id AND w.state IN ('pending', 'written'))
                    END,
                    s.reason, mo.id
             FROM memberships m
             JOIN objects mo ON mo.num = m.member_num
             LEFT JOIN planned_members p ON p.group_num = m.group_num AND p.member_num = m.member_num
             LEFT JOIN users u ON u.id = mo.id
             LEFT JOIN skipped_members s ON s.group_num = m.group_num AND s.member_num = m.member_num
             WHERE m.group_num = ?1",
        )?;
        let rows = stmt.query_map(params![group], |row| Ok((row.get::<_, String>(8)?, known_row(row, 0)?)))?;
        let mut known = Vec::new();
        for row in rows {
            let (member_id, raw) = row?;
            known.push((member_id, raw.into_known()?));
        }
        Ok(known)
    }

    fn set_planned_member(&mut self, group_id: &str, member_id: &str, reference: &MemberRef) -> Result<(), StoreError> {
        let (group, member) = (self.intern(group_id)?, self.intern(member_id)?);
        self.stmt("INSERT OR REPLACE INTO planned_members (group_num, member_num, ref_key) VALUES (?1, ?2, ?3)")?
            .execute(params![group, member, reference.key()])?;
        Ok(())
    }

    fn clear_planned_member(&mut self, group_id: &str, member_id: &str) -> Result<(), StoreError> {
        let Some((group, member)) = self.pair(group_id, member_id)? else { return Ok(()) };
        self.stmt("DELETE FROM planned_members WHERE group_num = ?1 AND member_num = ?2")?
            .execute(params![group, member])?;
        Ok(())
    }

    fn planned_member_ids(&self, group_id: &str) -> Result<Vec<String>, StoreError> {
        self.strings(
            "SELECT o.id FROM planned_members p JOIN objects o ON o.num = p.member_num
             WHERE p.group_num = (SELECT num FROM objects WHERE id = ?1)",
            group_id,
        )
    }

    fn planned_member_by_ref(&self, group_id: &str, reference: &MemberRef) -> Result<Option<String>, StoreError> {
        Ok(self
            .stmt(
                "SELECT o.id FROM planned_members p JOIN objects o ON o.num = p.member_num
                 WHERE p.group_num = (SELECT num FROM objects WHERE id = ?1) AND p.ref_key = ?2",
            )?
            .query_row(params![group_id, reference.key()], |row| row.get(0))
            .optional()?)
    }

    fn planned_member_count(&self, group_id: &str) -> Result<u64, StoreError> {
        let count: i64 = self
            .stmt("SELECT COUNT(*) FROM planned_members WHERE group_num = (SELECT num FROM objects WHERE id = ?1)")?
            .query_row(params![group_id], |row| row.get(0))?;
        Ok(count.max(0) as u64)
    }

    fn forget_planned_links_to(&mut self, member_id: &str) -> Result<(), StoreError> {
        let Some(member) = self.num(member_id)? else { return Ok(()) };
        self.stmt("DELETE FROM planned_members WHERE member_num = ?1")?.execute(params![member])?;
        self.stmt("DELETE FROM held_member_removals WHERE member_num = ?1")?.execute(params![member])?;
        Ok(())
    }

    fn set_skipped_member(
        &mut self,
        group_id: &str,
        member_id: &str,
        kind: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let (group, member) = (self.intern(group_id)?, self.intern(member_id)?);
        self.stmt(
            "INSERT OR REPLACE INTO skipped_members (group_num, member_num, member_kind, reason) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![group, member, kind, reason])?;
        Ok(())
    }

    fn clear_skipped_member(&mut self, group_id: &str, member_id: &str) -> Result<(), StoreError> {
        let Some((group, member)) = self.pair(group_id, member_id)? else { return Ok(()) };
        self.stmt("DELETE FROM skipped_members WHERE group_num = ?1 AND member_num = ?2")?
            .execute(params![group, member])?;
        Ok(())
    }

    fn skipped_members(&self, group_id: &str, limit: usize) -> Result<Vec<SkippedMember>, StoreError> {
        queries::skipped_members(self.conn, group_id, limit)
    }

    fn forget_member_plan(&mut self, group_id: &str) -> Result<(), StoreError> {
        let Some(group) = self.num(group_id)? else { return Ok(()) };
        self.stmt("DELETE FROM planned_members WHERE group_num = ?1")?.execute(params![group])?;
        self.stmt("DELETE FROM skipped_members WHERE group_num = ?1")?.execute(params![group])?;
        self.stmt("DELETE FROM held_member_removals WHERE group_num = ?1")?.execute(params![group])?;
        Ok(())
    }

    fn held_member_removal_count(&self, group_id: &str) -> Result<u64, StoreError> {
        let Some(group) = self.num(group_id)? else { return Ok(0) };
        let count: i64 = self
            .stmt("SELECT COUNT(*) FROM held_member_removals WHERE group_num = ?1 AND kept = 0")?
            .query_row(params![group], |row| row.get(0))?;
        Ok(count.max(0) as u64)
    }

    fn hold_member_removal(
        &mut self,
        group_id: &str,
        member_id: &str,
        reference: &MemberRef,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (group, member) = (self.intern(group_id)?, self.intern(member_id)?);
        self.stmt(
            "INSERT OR REPLACE INTO held_member_removals (group_num, member_num, ref_key, reason, held_ms, kept)
             VALUES (?1, ?2, ?3, ?4, ?5, 0)",
        )?
        .execute(params![group, member, reference.key(), reason, now_ms])?;
        Ok(())
    }

    fn release_held_member_removal(&mut self, group_id: &str, reference: &MemberRef) -> Result<(), StoreError> {
        let Some(group) = self.num(group_id)? else { return Ok(()) };
        self.stmt("DELETE FROM held_member_removals WHERE group_num = ?1 AND ref_key = ?2")?
            .execute(params![group, reference.key()])?;
        Ok(())
    }

    fn take_held_member_removals(&mut self, group_id: &str) -> Result<Vec<MemberRef>, StoreError> {
        let Some(group) = self.num(group_id)? else { return Ok(Vec::new()) };
        let keys: Vec<String> = self
            .stmt("SELECT ref_key FROM held_member_removals WHERE group_num = ?1 AND kept = 0 ORDER BY member_num")?
            .query_map(params![group], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        self.stmt("DELETE FROM held_member_removals WHERE group_num = ?1 AND kept = 0")?.execute(params![group])?;
        keys.into_iter()
            .map(|key| {
                MemberRef::from_key(&key).ok_or(StoreError::Corrupt { what: "held member reference", detail: key })
            })
            .collect()
    }

    fn keep_held_member_removals(&mut self, group_id: &str) -> Result<u64, StoreError> {
        let Some(group) = self.num(group_id)? else { return Ok(0) };
        Ok(self
            .stmt("UPDATE held_member_removals SET kept = 1 WHERE group_num = ?1 AND kept = 0")?
            .execute(params![group])? as u64)
    }

    fn groups_with_held_member_removals(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.stmt(
            "SELECT DISTINCT o.id FROM held_member_removals h JOIN objects o ON o.num = h.group_num
             WHERE h.kept = 0 ORDER BY o.id",
        )?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn member_removals_sent_since(&mut self, group_id: &str, window_start_ms: i64) -> Result<u64, StoreError> {
        let Some(group) = self.num(group_id)? else { return Ok(0) };
        self.stmt("DELETE FROM member_removals_sent WHERE group_num = ?1 AND at_ms < ?2")?
            .execute(params![group, window_start_ms])?;
        let sum: i64 = self
            .stmt("SELECT COALESCE(SUM(removals), 0) FROM member_removals_sent WHERE group_num = ?1")?
            .query_row(params![group], |row| row.get(0))?;
        Ok(sum.max(0) as u64)
    }

    fn record_member_removals_sent(&mut self, group_id: &str, removals: u64, at_ms: i64) -> Result<(), StoreError> {
        let group = self.intern(group_id)?;
        self.stmt("INSERT INTO member_removals_sent (group_num, at_ms, removals) VALUES (?1, ?2, ?3)")?
            .execute(params![group, at_ms, i64::try_from(removals).unwrap_or(i64::MAX)])?;
        Ok(())
    }

    fn groups_to_replan(&self, member_id: &str) -> Result<Vec<String>, StoreError> {
        self.strings(
            "SELECT go.id FROM memberships m JOIN objects go ON go.num = m.group_num JOIN writeback w ON w.group_id = go.id
             WHERE m.member_num = (SELECT num FROM objects WHERE id = ?1) AND w.state IN ('pending', 'written')
             UNION SELECT go.id FROM planned_members p JOIN objects go ON go.num = p.group_num
             WHERE p.member_num = (SELECT num FROM objects WHERE id = ?1)",
            member_id,
        )
    }

    fn writeback(&self, group_id: &str) -> Result<Option<WritebackRow>, StoreError> {
        let row: Option<(String, Option<String>, i64, Option<String>)> = self
            .stmt(
                "SELECT state, spec_fingerprint, last_outcome_sequence, object_guid FROM writeback WHERE group_id = ?1",
            )?
            .query_row(params![group_id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
            .optional()?;
        let Some((state, fingerprint, last_outcome_sequence, object_guid)) = row else { return Ok(None) };
        let fingerprint = match fingerprint {
            Some(text) => Some(
                u64::from_str_radix(&text, 16)
                    .map_err(|_| StoreError::Corrupt { what: "spec fingerprint", detail: text })?,
            ),
            None => None,
        };
        Ok(Some(WritebackRow { state: state_from(&state)?, fingerprint, last_outcome_sequence, object_guid }))
    }

    fn ensure_writeback(&mut self, group_id: &str, now_ms: i64) -> Result<(), StoreError> {
        self.stmt("INSERT OR IGNORE INTO writeback (group_id, state, updated_ms) VALUES (?1, ?2, ?3)")?
            .execute(params![group_id, WritebackState::Skipped.as_str(), now_ms])?;
        Ok(())
    }

    fn set_state(
        &mut self,
        group_id: &str,
        state: WritebackState,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.stmt("UPDATE writeback SET state = ?2, reason = ?3, updated_ms = ?4 WHERE group_id = ?1")?
            .execute(params![group_id, state.as_str(), reason, now_ms])?;
        Ok(())
    }

    fn set_spec(&mut self, group_id: &str, fingerprint: u64, target_type: &str, now_ms: i64) -> Result<(), StoreError> {
        self.stmt("UPDATE writeback SET spec_fingerprint = ?2, target_type = ?3, updated_ms = ?4 WHERE group_id = ?1")?
            .execute(params![group_id, format!("{fingerprint:016x}"), target_type, now_ms])?;
        Ok(())
    }

    fn next_sequence(&mut self, group_id: &str) -> Result<u64, StoreError> {
        let sequence: i64 = self
            .stmt("UPDATE writeback SET next_sequence = next_sequence + 1 WHERE group_id = ?1 RETURNING next_sequence")?
            .query_row(params![group_id], |row| row.get(0))?;
        Ok(u64::try_from(sequence).unwrap_or(0))
    }

    fn set_last_outcome_sequence(&mut self, group_id: &str, sequence: i64) -> Result<(), StoreError> {
        self.stmt("UPDATE writeback SET last_outcome_sequence = ?2 WHERE group_id = ?1")?
            .execute(params![group_id, sequence])?;
        Ok(())
    }

    fn record_failure(
        &mut self,
        group_id: &str,
        message: &str,
        keep_cause: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.stmt(
            "UPDATE writeback SET state = ?2, last_error = CASE WHEN ?5 THEN last_error ELSE ?3 END, updated_ms = ?4 WHERE group_id = ?1",
        )?
        .execute(params![group_id, WritebackState::Error.as_str(), message, now_ms, keep_cause])?;
        self.stmt("INSERT INTO errors (at_ms, group_id, message) VALUES (?1, ?2, ?3)")?
            .execute(params![now_ms, group_id, message])?;
        // The recent-errors log keeps the last 200.
        self.stmt("DELETE FROM errors WHERE id <= (SELECT MAX(id) - 200 FROM errors)")?.execute([])?;
        Ok(())
    }

    fn record_applied(&mut self, group_id: &str, group: &AppliedGroup, now_ms: i64) -> Result<(), StoreError> {
        self.stmt(
            "UPDATE writeback SET dn = ?2, object_guid = ?3, object_sid = ?4, sam_account_name = ?5, updated_ms = ?6 WHERE group_id = ?1",
        )?
        .execute(params![group_id, group.dn, group.object_guid, group.object_sid, group.sam_account_name, now_ms])?;
        Ok(())
    }

    fn mark_written(&mut self, group_id: &str) -> Result<(), StoreError> {
        self.stmt("UPDATE writeback SET state = ?2, last_error = NULL WHERE group_id = ?1")?
            .execute(params![group_id, WritebackState::Written.as_str()])?;
        Ok(())
    }

    fn set_addresses_skipped(&mut self, group_id: &str, addresses: &[String]) -> Result<(), StoreError> {
        self.stmt("UPDATE writeback SET addresses_skipped = ?2 WHERE group_id = ?1")?
            .execute(params![group_id, addresses.join("\n")])?;
        Ok(())
    }

    fn set_name_clash(&mut self, group_id: &str, clash: &str) -> Result<(), StoreError> {
        self.stmt("UPDATE writeback SET name_clash = ?2 WHERE group_id = ?1")?.execute(params![group_id, clash])?;
        Ok(())
    }

    fn mark_deleted(&mut self, group_id: &str, now_ms: i64) -> Result<(), StoreError> {
        self.stmt(
                "UPDATE writeback SET state = ?2, dn = NULL, object_guid = NULL, object_sid = NULL, updated_ms = ?3 WHERE group_id = ?1",
            )?
            .execute(params![group_id, WritebackState::Deleted.as_str(), now_ms])?;
        Ok(())
    }

    fn group_ids_in_states(&self, states: &[WritebackState]) -> Result<Vec<String>, StoreError> {
        let sql = format!("SELECT group_id FROM writeback WHERE state IN ({}) ORDER BY group_id", state_list(states));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn count_in_states(&self, states: &[WritebackState]) -> Result<u64, StoreError> {
        let sql = format!("SELECT COUNT(*) FROM writeback WHERE state IN ({})", state_list(states));
        let count: i64 = self.conn.prepare_cached(&sql)?.query_row([], |row| row.get(0))?;
        Ok(count.max(0) as u64)
    }

    fn request_deletion(&mut self, group_id: &str, reason: &str, now_ms: i64) -> Result<(), StoreError> {
        self.stmt(
            "INSERT INTO pending_deletions (group_id, reason, requested_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(group_id) DO UPDATE SET reason = excluded.reason",
        )?
        .execute(params![group_id, reason, now_ms])?;
        Ok(())
    }

    fn cancel_deletion(&mut self, group_id: &str) -> Result<(), StoreError> {
        self.stmt("DELETE FROM pending_deletions WHERE group_id = ?1")?.execute(params![group_id])?;
        Ok(())
    }

    fn take_pending_deletions(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let pending: Vec<(String, String)> = {
            let mut stmt = self.stmt("SELECT group_id, reason FROM pending_deletions ORDER BY group_id")?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        if !pending.is_empty() {
            self.stmt("DELETE FROM pending_deletions")?.execute([])?;
        }
        Ok(pending)
    }

    fn deletions_sent_since(&mut self, window_start_ms: i64) -> Result<u64, StoreError> {
        self.stmt("DELETE FROM deletions_sent WHERE at_ms < ?1")?.execute(params![window_start_ms])?;
        let count: i64 = self.stmt("SELECT COUNT(*) FROM deletions_sent")?.query_row([], |row| row.get(0))?;
        Ok(count.max(0) as u64)
    }

    fn record_deletion_sent(&mut self, group_id: &str, at_ms: i64) -> Result<(), StoreError> {
        self.stmt("INSERT INTO deletions_sent (group_id, at_ms) VALUES (?1, ?2)")?.execute(params![group_id, at_ms])?;
        Ok(())
    }

    fn enqueue(&mut self, command: &PlannedCommand) -> Result<(), StoreError> {
        let kind = command.kind.as_str();
        self.stmt("INSERT INTO outbox (command_id, partition, payload, headers) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![command.command_id, command.partition, command.payload, command.headers])?;
        self.stmt("INSERT INTO inflight (command_id, group_id, kind, planned_ms) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![command.command_id, command.group_id, kind, command.planned_ms])?;
        self.audit(&AuditEntry {
            at_ms: command.planned_ms,
            group_id: &command.group_id,
            command_id: &command.command_id,
            kind,
            result: super::AuditResult::Planned,
            cause: &command.cause,
            detail: &command.detail,
        })
    }

    fn audit(&mut self, entry: &AuditEntry<'_>) -> Result<(), StoreError> {
        self.stmt("INSERT INTO audit (at_ms, group_id, command_id, kind, result, cause, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?
            .execute(params![entry.at_ms, entry.group_id, entry.command_id, entry.kind, entry.result.as_str(), entry.cause, entry.detail])?;
        Ok(())
    }

    fn command_finished(&mut self, command_id: &str) -> Result<(), StoreError> {
        self.stmt("DELETE FROM inflight WHERE command_id = ?1")?.execute(params![command_id])?;
        Ok(())
    }

    fn outbox_head(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        outbox_head(self.conn, limit)
    }

    fn remove_from_outbox(&mut self, seq: i64) -> Result<(), StoreError> {
        self.stmt("DELETE FROM outbox WHERE seq = ?1")?.execute(params![seq])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A number given in a transaction that rolls back is forgotten with it: the next
    /// transaction that names the object must give it a number that a row holds.
    #[test]
    fn object_numbers_given_in_a_rolled_back_transaction_are_forgotten() {
        let mut store = SqliteStore::open(Path::new(":memory:")).unwrap();
        {
            let mut tx = store.transaction().unwrap();
            assert!(tx.upsert_membership("g-kept", "u-kept", MemberKind::User, "r1").unwrap());
            tx.commit().unwrap();
        }
        {
            let mut tx = store.transaction().unwrap();
            assert!(tx.upsert_membership("g-kept", "u-rolled-back", MemberKind::User, "r1").unwrap());
            assert!(tx.num("u-rolled-back").unwrap().is_some());
            // Dropped without a commit: rolled back.
        }
        assert!(store.nums.borrow().get("u-rolled-back").is_none(), "the cache forgot the rolled-back number");
        assert!(store.nums.borrow().get("u-kept").is_some(), "committed numbers stay cached");
        let mut tx = store.transaction().unwrap();
        assert_eq!(tx.num("u-rolled-back").unwrap(), None, "no row holds the rolled-back object");
        assert!(tx.upsert_membership("g-kept", "u-rolled-back", MemberKind::User, "r2").unwrap());
        assert_eq!(tx.membership_kind("g-kept", "u-rolled-back").unwrap(), Some(MemberKind::User));
        assert_eq!(tx.membership_kind("g-kept", "u-kept").unwrap(), Some(MemberKind::User));
        tx.commit().unwrap();
    }
}
