//! What a `select *` over a large table costs a poll now that a second row is an error: time and
//! peak memory per poll through the real sources (SQLite, and a real PostgreSQL server started
//! here), next to a one-row aggregate over the same table and next to a client that reads the
//! whole result (what a scaler that "takes the first row" but drains the rest pays).
//!
//! `cargo bench --bench many_rows` (1,000,000 rows; ORASCALE_BENCH_ROWS to change). Under
//! `cargo test` it runs as a smoke test on 20,000 rows. Prints one JSON line last.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use orascale::config::{ConnectionConfig, ConnectionUrl, SqliteTarget};
use orascale::source::{self, Cell, Source, SourceError};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident memory of this process so far (VmHWM), in KiB.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    (v[v.len() / 2].as_secs_f64() * 1e5).round() / 100.0
}

/// Polls `sql` `iters` times through the source; checks every outcome with `expect`.
async fn polls(
    src: &dyn Source,
    sql: &str,
    iters: usize,
    expect: impl Fn(&Result<Cell, SourceError>) -> bool,
) -> Value {
    let before = peak_kib();
    let mut times = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        let got = src.query(sql, TIMEOUT).await;
        times.push(t.elapsed());
        assert!(expect(&got), "{sql}: {got:?}");
    }
    json!({"query": sql, "median_ms": median_ms(times), "peak_rss_growth_kib": peak_kib() - before})
}

fn many(r: &Result<Cell, SourceError>) -> bool {
    matches!(r, Err(SourceError::ManyRows { .. }))
}

fn number(n: f64) -> impl Fn(&Result<Cell, SourceError>) -> bool {
    move |r| r == &Ok(Cell::Number(n))
}

async fn sqlite(rows: u64, iters: usize) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(&format!(
            "create table big(id integer primary key, payload text);
             insert into big select x, printf('%0100d', x) from
               (with recursive n(x) as (select 1 union all select x + 1 from n where x < {rows}) select x from n);"
        ))
        .unwrap();
    }
    let conn = ConnectionConfig::new(
        "bench",
        ConnectionUrl::Sqlite(SqliteTarget::File(path.clone())),
    );
    let src = source::open(&conn).unwrap();
    // One column over many rows: `select *` (two columns) is now refused before it runs.
    let star = polls(src.as_ref(), "select id from big", iters, many).await;
    let count = polls(
        src.as_ref(),
        "select count(*) from big",
        iters,
        number(rows as f64),
    )
    .await;
    // Reference: step through every row, as a driver that drains the result does.
    let before = peak_kib();
    let mut times = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        let c = rusqlite::Connection::open(&path).unwrap();
        let mut stmt = c.prepare("select * from big").unwrap();
        let mut it = stmt.query([]).unwrap();
        let mut n = 0u64;
        while it.next().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, rows);
        times.push(t.elapsed());
    }
    let drain = json!({"query": "select * from big", "median_ms": median_ms(times),
        "peak_rss_growth_kib": peak_kib() - before});
    json!({"source": "sqlite", "rows": rows, "select_star_refused": star,
        "count_star": count, "reference_read_all_rows": drain})
}

async fn postgres(rows: u64, iters: usize) -> Value {
    let Some(pg) = support::pg::Pg::start_or_skip("many_rows bench (postgres)") else {
        return json!({"source": "postgres", "skipped": "no PostgreSQL server binaries"});
    };
    let admin = pg.setup().await;
    admin
        .batch_execute(&format!(
            "create table big as select g as id, lpad(g::text, 100, '0') as payload
               from generate_series(1, {rows}) g;
             analyze big;
             grant select on big to {};",
            support::pg::SCALER_USER
        ))
        .await
        .unwrap();
    let conn = support::connection("bench", &pg.scaler_url());
    let src = source::open(&conn).unwrap();
    src.query("select 1", TIMEOUT).await.unwrap(); // the session is open before timing
    // One column over many rows: `select *` (two columns) is now refused before it runs.
    let star = polls(src.as_ref(), "select id from big", iters, many).await;
    let count = polls(
        src.as_ref(),
        "select count(*) from big",
        iters,
        number(rows as f64),
    )
    .await;
    // Reference: the whole result sent and read, as `query_raw` + "first row" used to do.
    let before = peak_kib();
    let mut times = Vec::new();
    let mut bytes = 0usize;
    for _ in 0..iters {
        let t = Instant::now();
        let all = admin.query("select * from big", &[]).await.unwrap();
        assert_eq!(all.len() as u64, rows);
        bytes = all.iter().map(|r| r.get::<_, &str>(1).len() + 4).sum();
        times.push(t.elapsed());
    }
    let drain = json!({"query": "select * from big", "median_ms": median_ms(times),
        "peak_rss_growth_kib": peak_kib() - before, "payload_bytes_sent": bytes});
    json!({"source": "postgres", "rows": rows, "select_star_refused": star,
        "count_star": count, "reference_read_all_rows": drain})
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rows: u64 = env_or(
        "ORASCALE_BENCH_ROWS",
        if bench { 1_000_000 } else { 20_000 },
    );
    let iters: usize = if bench { 9 } else { 2 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (lite, pg) =
        rt.block_on(async { (sqlite(rows, iters).await, postgres(rows, iters).await) });
    println!(
        "{}",
        json!({"bench": "many_rows", "iterations": iters, "results": [lite, pg]})
    );
}
