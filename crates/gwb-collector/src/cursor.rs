//! Durable delta cursors (one deltaLink per resource) in SQLite.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};

use gwb_graph::Resource;

/// The connection sits behind a mutex only so the collector's futures are `Send`
/// (rusqlite connections are not `Sync`); one task uses it.
pub struct CursorStore {
    db: Mutex<Connection>,
}

impl CursorStore {
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS cursors (
                resource TEXT PRIMARY KEY,
                delta_link TEXT NOT NULL,
                saved_at_ms INTEGER NOT NULL
            );",
        )?;
        Ok(CursorStore { db: Mutex::new(db) })
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn delta_link(&self, resource: Resource) -> rusqlite::Result<Option<String>> {
        self.db()
            .query_row("SELECT delta_link FROM cursors WHERE resource = ?1", params![resource.path()], |row| row.get(0))
            .optional()
    }

    pub fn save(&self, resource: Resource, delta_link: &str, now_ms: i64) -> rusqlite::Result<()> {
        self.db().execute(
            "INSERT INTO cursors (resource, delta_link, saved_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(resource) DO UPDATE SET delta_link = excluded.delta_link, saved_at_ms = excluded.saved_at_ms",
            params![resource.path(), delta_link, now_ms],
        )?;
        Ok(())
    }

    pub fn forget(&self, resource: Resource) -> rusqlite::Result<()> {
        self.db().execute("DELETE FROM cursors WHERE resource = ?1", params![resource.path()])?;
        Ok(())
    }
}
