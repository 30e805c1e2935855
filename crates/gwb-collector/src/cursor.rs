//! Durable delta positions in SQLite: per resource, the deltaLink of the last completed
//! round and, while a round runs, the nextLink after its last confirmed page. Both carry
//! the round's initial query (endpoint, API version, `$select`), so a cursor never
//! outlives the configuration that made it.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};

use gwb_graph::Resource;

/// The connection sits behind a mutex only so the collector's futures are `Send`
/// (rusqlite connections are not `Sync`); one task uses it.
pub struct CursorStore {
    db: Mutex<Connection>,
}

/// The deltaLink a completed round ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub delta_link: String,
    /// The initial query of the round that produced it; `None` for a cursor stored by
    /// a version that did not record it (taken as the current query: see [`CursorStore::open`]).
    pub query: Option<String>,
}

/// Where an unfinished round stands: its identity, and the link to the first page
/// whose events are not yet confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundProgress {
    pub round_id: String,
    pub next_link: String,
    pub full: bool,
    /// Events published so far (the next event's `round_position`).
    pub position: u64,
    /// Pages read so far (for the loop guard and the logs).
    pub pages: u64,
    pub query: String,
}

impl CursorStore {
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL, not FULL: in WAL mode a commit survives a crash of the process, and
        // what a power loss may take back is only the newest positions, which moves a
        // round back to an earlier page or deltaLink: it re-reads, it never skips. That
        // is what lets a round record its position after every page.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS cursors (
                resource TEXT PRIMARY KEY,
                delta_link TEXT NOT NULL,
                saved_at_ms INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS round_progress (
                resource TEXT PRIMARY KEY,
                round_id TEXT NOT NULL,
                next_link TEXT NOT NULL,
                full INTEGER NOT NULL,
                position INTEGER NOT NULL,
                pages INTEGER NOT NULL,
                query TEXT NOT NULL,
                saved_at_ms INTEGER NOT NULL
            );",
        )?;
        // Cursors stored before the query was recorded keep NULL: an upgrade with an
        // unchanged configuration must not force every tenant into a full round. The
        // next completed round records the query.
        let has_query: bool =
            db.query_row("SELECT COUNT(*) FROM pragma_table_info('cursors') WHERE name = 'query'", [], |row| {
                row.get::<_, i64>(0)
            })? > 0;
        if !has_query {
            db.execute_batch("ALTER TABLE cursors ADD COLUMN query TEXT")?;
        }
        Ok(CursorStore { db: Mutex::new(db) })
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn cursor(&self, resource: Resource) -> rusqlite::Result<Option<Cursor>> {
        self.db()
            .query_row("SELECT delta_link, query FROM cursors WHERE resource = ?1", params![resource.path()], |row| {
                Ok(Cursor { delta_link: row.get(0)?, query: row.get(1)? })
            })
            .optional()
    }

    pub fn progress(&self, resource: Resource) -> rusqlite::Result<Option<RoundProgress>> {
        self.db()
            .query_row(
                "SELECT round_id, next_link, full, position, pages, query FROM round_progress WHERE resource = ?1",
                params![resource.path()],
                |row| {
                    Ok(RoundProgress {
                        round_id: row.get(0)?,
                        next_link: row.get(1)?,
                        full: row.get(2)?,
                        position: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                        pages: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
                        query: row.get(5)?,
                    })
                },
            )
            .optional()
    }

    /// Records that every event up to `progress.next_link` is confirmed.
    pub fn save_progress(&self, resource: Resource, progress: &RoundProgress, now_ms: i64) -> rusqlite::Result<()> {
        self.db().execute(
            "INSERT INTO round_progress (resource, round_id, next_link, full, position, pages, query, saved_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(resource) DO UPDATE SET round_id = excluded.round_id, next_link = excluded.next_link,
               full = excluded.full, position = excluded.position, pages = excluded.pages,
               query = excluded.query, saved_at_ms = excluded.saved_at_ms",
            params![
                resource.path(),
                progress.round_id,
                progress.next_link,
                progress.full,
                i64::try_from(progress.position).unwrap_or(i64::MAX),
                i64::try_from(progress.pages).unwrap_or(i64::MAX),
                progress.query,
                now_ms
            ],
        )?;
        Ok(())
    }

    /// A round completed: its deltaLink becomes the cursor and its progress is dropped,
    /// in one transaction.
    pub fn complete(&self, resource: Resource, delta_link: &str, query: &str, now_ms: i64) -> rusqlite::Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO cursors (resource, delta_link, saved_at_ms, query) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(resource) DO UPDATE SET delta_link = excluded.delta_link,
               saved_at_ms = excluded.saved_at_ms, query = excluded.query",
            params![resource.path(), delta_link, now_ms, query],
        )?;
        tx.execute("DELETE FROM round_progress WHERE resource = ?1", params![resource.path()])?;
        tx.commit()
    }

    /// Drops an unfinished round's position, so the next attempt starts the round anew.
    pub fn forget_progress(&self, resource: Resource) -> rusqlite::Result<()> {
        self.db().execute("DELETE FROM round_progress WHERE resource = ?1", params![resource.path()])?;
        Ok(())
    }

    /// Forgets the cursor and any unfinished round: the next round is a full round.
    pub fn forget(&self, resource: Resource) -> rusqlite::Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM cursors WHERE resource = ?1", params![resource.path()])?;
        tx.execute("DELETE FROM round_progress WHERE resource = ?1", params![resource.path()])?;
        tx.commit()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("gwb-cursor-{name}-{}.db", std::process::id()))
    }

    #[test]
    fn progress_survives_a_reopen_and_completion_replaces_it_with_the_cursor() {
        let path = temp_db("progress");
        let _ = std::fs::remove_file(&path);
        let progress = RoundProgress {
            round_id: "r1".into(),
            next_link: "https://g/groups/delta?$skiptoken=p7".into(),
            full: true,
            position: 700,
            pages: 7,
            query: "https://g/v1.0/groups/delta?$select=id".into(),
        };
        {
            let store = CursorStore::open(&path).unwrap();
            store.save_progress(Resource::Groups, &progress, 1).unwrap();
        }
        let store = CursorStore::open(&path).unwrap();
        assert_eq!(store.progress(Resource::Groups).unwrap(), Some(progress.clone()));
        assert_eq!(store.progress(Resource::Users).unwrap(), None);
        store.complete(Resource::Groups, "https://g/groups/delta?$deltatoken=d", &progress.query, 2).unwrap();
        assert_eq!(store.progress(Resource::Groups).unwrap(), None);
        let cursor = store.cursor(Resource::Groups).unwrap().unwrap();
        assert_eq!(cursor.query.as_deref(), Some(progress.query.as_str()));
        store.forget(Resource::Groups).unwrap();
        assert_eq!(store.cursor(Resource::Groups).unwrap(), None);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_cursor_table_from_before_the_query_column_is_migrated() {
        let path = temp_db("migrate");
        let _ = std::fs::remove_file(&path);
        {
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE cursors (resource TEXT PRIMARY KEY, delta_link TEXT NOT NULL, saved_at_ms INTEGER NOT NULL);
                 INSERT INTO cursors VALUES ('groups', 'https://g/groups/delta?$deltatoken=old', 1);",
            )
            .unwrap();
        }
        let store = CursorStore::open(&path).unwrap();
        let cursor = store.cursor(Resource::Groups).unwrap().unwrap();
        assert_eq!(cursor, Cursor { delta_link: "https://g/groups/delta?$deltatoken=old".into(), query: None });
        let _ = std::fs::remove_file(&path);
    }
}
