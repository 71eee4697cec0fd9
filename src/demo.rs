//! The `--demo` database: a SQLite file with a `jobs` table, created if missing, so anyone can
//! watch orascale scale without a database server. This is the only code that writes to a
//! database, and it only ever touches the demo file.

use std::path::Path;

use rusqlite::Connection;

use crate::config::DemoAction;

/// The query the demo's instructions use.
pub const QUERY: &str = "select count(*) from jobs where status = 'queued'";

/// Creates the file and table if missing (WAL, so the scaler's reads never block a write).
pub fn prepare(path: &Path) -> rusqlite::Result<()> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.execute_batch(
        "create table if not exists jobs (
             id integer primary key,
             status text not null default 'queued',
             created_at text not null default current_timestamp
         );
         create index if not exists jobs_status on jobs(status);",
    )?;
    Ok(())
}

/// Runs one `orascale demo` action and returns the number of queued jobs after it.
pub fn act(path: &Path, action: DemoAction) -> rusqlite::Result<i64> {
    prepare(path)?;
    let mut conn = Connection::open(path)?;
    match action {
        DemoAction::Enqueue { n } => {
            let tx = conn.transaction()?;
            for _ in 0..n {
                tx.execute("insert into jobs(status) values ('queued')", [])?;
            }
            tx.commit()?;
        }
        DemoAction::Drain => {
            conn.execute(
                "update jobs set status = 'done' where status = 'queued'",
                [],
            )?;
        }
        DemoAction::Count => {}
    }
    conn.query_row(QUERY, [], |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("demo.db");
        assert_eq!(act(&db, DemoAction::Count).unwrap(), 0);
        assert_eq!(act(&db, DemoAction::Enqueue { n: 5 }).unwrap(), 5);
        assert_eq!(act(&db, DemoAction::Enqueue { n: 2 }).unwrap(), 7);
        assert_eq!(act(&db, DemoAction::Drain).unwrap(), 0);
        prepare(&db).unwrap();
        let total: i64 = Connection::open(&db)
            .unwrap()
            .query_row("select count(*) from jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, 7, "prepare keeps existing rows");
    }
}
