//! The `--demo` database: a SQLite file with a `jobs` table, created by `serve --demo` (or
//! `check --demo`) if missing, so anyone can watch orascale scale without a database server;
//! and the walkthrough `serve --demo` prints, whose commands run as printed (the program by
//! the path that started it, the database by its absolute path) from any directory. This is
//! the only code that writes to a database, and it only ever touches the demo file.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::config::DemoAction;

/// The query the demo's instructions use.
pub const QUERY: &str = "select count(*) from jobs where status = 'queued'";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// `orascale demo` never creates the database: run from another directory it would make a
    /// second, empty one that the server never reads.
    #[error(
        "no demo database there; `orascale serve --demo` (or `orascale check --demo`) creates \
         ./orascale-demo.db in its working directory: run this command in that directory, or \
         pass --db with the path the server printed"
    )]
    Missing,
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

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

/// Runs one `orascale demo` action on an existing demo database and returns the number of
/// queued jobs after it.
pub fn act(path: &Path, action: DemoAction) -> Result<i64, DemoError> {
    if !path.is_file() {
        return Err(DemoError::Missing);
    }
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
    Ok(conn.query_row(QUERY, [], |r| r.get(0))?)
}

/// The trigger the walkthrough's probes share (one poller, so `values` shows what `watch`
/// sees), as `-m` flags.
const TRIGGER: &[(&str, &str)] = &[
    ("connection", "demo"),
    ("query", QUERY),
    ("targetQueryValue", "5"),
    ("pollInterval", "2s"),
];

/// How to name this program in a command the user can paste anywhere: a bare name was found
/// on PATH and is found again; a path (`target/release/orascale` under `cargo run`, relative
/// to the directory cargo ran in, or `./orascale`) becomes the absolute path of the running
/// executable, so it works from any directory and without rebuilding.
pub fn program(argv0: &str, current_exe: Option<&Path>) -> String {
    match current_exe {
        Some(exe) if argv0.contains('/') || argv0.is_empty() => {
            shell_quote(&exe.display().to_string())
        }
        _ if argv0.is_empty() => "orascale".into(),
        _ => shell_quote(argv0),
    }
}

/// `s` as one POSIX shell word, quoted the way a person would write it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c));
    if plain {
        s.to_string()
    } else if !s.contains('\'') {
        format!("'{s}'")
    } else if !s.contains(['"', '$', '`', '\\', '!']) {
        format!("\"{s}\"")
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The address a client on this machine reaches a listener at.
fn local(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// What `serve --demo` prints: the commands to watch it scale, runnable as printed, and what
/// each will show. `db` should be absolute; `tls` when the gRPC port serves TLS.
pub fn walkthrough(me: &str, db: &Path, grpc: SocketAddr, tls: bool) -> String {
    let addr = local(grpc);
    let db_arg = shell_quote(&db.display().to_string());
    let trigger: Vec<String> = TRIGGER
        .iter()
        .map(|(k, v)| format!("-m {}", shell_quote(&format!("{k}={v}"))))
        .collect();
    let probe = format!("{me} probe --addr {addr} {}", trigger.join(" "));
    let mut out = format!(
        "demo database {} is ready (table jobs). In another terminal:\n  \
         watch:    {probe} --watch\n  \
         values:   {probe}\n  \
         add work: {me} demo --db {db_arg} enqueue 12\n  \
         drain:    {me} demo --db {db_arg} drain\n\
         After `enqueue 12` the watch prints StreamIsActive: result=true within one pollInterval \
         (2s); `values` shares its trigger and prints the value with its age. After `drain` the \
         stream stays silent (it never sends false); the watch prints `IsActive: result=false`, \
         which KEDA's polling loop sees and, after cooldownPeriod, scales the workload to zero.",
        db.display()
    );
    if tls {
        out.push_str(
            "\nThe gRPC port serves TLS: add --ca FILE (and --cert FILE --key FILE for mTLS) to \
             the probe commands.",
        );
    }
    out
}

/// `path` made absolute against the working directory, for printing.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("demo.db");
        assert!(matches!(
            act(&db, DemoAction::Enqueue { n: 1 }),
            Err(DemoError::Missing)
        ));
        assert!(!db.exists(), "an action never creates the database");
        prepare(&db).unwrap();
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

    #[test]
    fn the_program_is_named_so_it_runs_from_anywhere() {
        let exe = Path::new("/repo/target/release/orascale");
        let cases = [
            // `cargo run --release -- serve --demo`: relative to cargo's working directory.
            ("target/release/orascale", "/repo/target/release/orascale"),
            ("./orascale", "/repo/target/release/orascale"),
            (
                "/repo/target/release/orascale",
                "/repo/target/release/orascale",
            ),
            // Found on PATH: found there again.
            ("orascale", "orascale"),
        ];
        for (argv0, want) in cases {
            assert_eq!(program(argv0, Some(exe)), want, "{argv0}");
        }
        assert_eq!(
            program(
                "target/debug/orascale",
                Some(Path::new("/my repo/orascale"))
            ),
            "'/my repo/orascale'"
        );
        assert_eq!(program("", None), "orascale");
        for (word, quoted) in [
            ("it's", r#""it's""#),
            ("a b", "'a b'"),
            ("it's $HOME", r"'it'\''s $HOME'"),
            ("", "''"),
        ] {
            assert_eq!(shell_quote(word), quoted, "{word}");
        }
    }

    #[test]
    fn the_walkthrough_shares_one_trigger_and_names_the_database() {
        let db = Path::new("/work dir/orascale-demo.db");
        let text = walkthrough("/x/orascale", db, "0.0.0.0:9090".parse().unwrap(), false);
        let line = |label: &str| {
            text.lines()
                .find_map(|l| l.trim_start().strip_prefix(label))
                .unwrap_or_else(|| panic!("{label}: {text}"))
                .trim()
                .to_string()
        };
        let watch = line("watch:");
        let values = line("values:");
        assert_eq!(watch, format!("{values} --watch"), "the same trigger");
        assert!(values.starts_with("/x/orascale probe --addr 127.0.0.1:9090 "));
        assert!(
            values.contains(r#"-m "query=select count(*) from jobs where status = 'queued'""#),
            "{values}"
        );
        assert!(values.contains("-m pollInterval=2s") && values.contains("-m connection=demo"));
        assert_eq!(
            line("add work:"),
            "/x/orascale demo --db '/work dir/orascale-demo.db' enqueue 12"
        );
        assert!(line("drain:").ends_with("drain"));
        assert!(text.contains("never sends false") && text.contains("cooldownPeriod"));
        assert!(!text.contains("--ca"));
        let tls = walkthrough("o", db, "[::]:9090".parse().unwrap(), true);
        assert!(
            tls.contains("--addr [::1]:9090") && tls.contains("--ca FILE"),
            "{tls}"
        );
    }
}
