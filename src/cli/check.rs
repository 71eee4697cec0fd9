//! `orascale check`: a doctor for operators. Loads the same configuration as `serve` and, for
//! each connection, reports whether its driver (and client library) loads, whether it connects,
//! the server version and the round-trip time of a trivial query; optionally runs a query and
//! prints the value a trigger would report. With TLS configured it also checks the certificate
//! files as clients will judge them (`tls::inspect`). `--demo` creates the demo database as
//! `serve --demo` does. A table for people, `--json` for scripts.

use std::time::Duration;

use serde::Serialize;

use crate::config::{CheckArgs, Config};
use crate::source::{self, Cell};

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub connections: Vec<ConnectionReport>,
    /// The TLS files, when the gRPC port is configured for TLS.
    pub tls: Vec<TlsReport>,
}

#[derive(Debug, Serialize)]
pub struct TlsReport {
    pub file: String,
    pub check: Step<String>,
}

#[derive(Debug, Serialize)]
pub struct ConnectionReport {
    pub name: String,
    pub kind: String,
    /// The URL with its password redacted.
    pub url: String,
    pub driver: Step<String>,
    pub server_version: Step<String>,
    pub round_trip_ms: Option<f64>,
    pub query: Option<Step<String>>,
}

/// One check's outcome.
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step<T> {
    Ok(T),
    Failed(String),
    Skipped,
}

impl<T> Step<T> {
    fn is_failed(&self) -> bool {
        matches!(self, Step::Failed(_))
    }
}

/// Checks the connections of `config` (or only `only`).
pub async fn check(config: &Config, args: &CheckArgs) -> Result<Report, String> {
    // `--demo` means what it means for `serve`: the demo database, created if missing.
    if let Some(path) = &config.demo_db {
        super::demo::prepare(path).map_err(|e| format!("--demo {}: {e}", path.display()))?;
    }
    if let Some(only) = &args.only
        && !config.connections.contains_key(only)
    {
        let known: Vec<&str> = config.connections.keys().map(String::as_str).collect();
        return Err(format!(
            "--only {only:?} is not a configured connection; configured: {}",
            known.join(", ")
        ));
    }
    if config.connections.is_empty() {
        return Err(
            "no connections configured: add --connection NAME=URL or a [connections.NAME] table"
                .into(),
        );
    }
    let mut reports = Vec::new();
    for (name, conn) in &config.connections {
        if args.only.as_ref().is_some_and(|o| o != name) {
            continue;
        }
        let mut report = ConnectionReport {
            name: name.clone(),
            kind: conn.url.kind().to_string(),
            url: conn.url.to_string(),
            driver: Step::Skipped,
            server_version: Step::Skipped,
            round_trip_ms: None,
            query: args.query.as_ref().map(|_| Step::Skipped),
        };
        // The server's own rules first (length, SQL guard): a query it would refuse is refused
        // here with the same message, and never reaches the database.
        let query = match args
            .query
            .as_deref()
            .map(|q| crate::metadata::guarded_query(q, conn, &config.engine.limits))
        {
            Some(Err(e)) => {
                report.query = Some(Step::Failed(e.to_string()));
                reports.push(report);
                continue;
            }
            Some(Ok(q)) => Some(q),
            None => None,
        };
        let src = match source::open(conn) {
            Ok(s) => s,
            Err(e) => {
                report.driver = Step::Failed(e.to_string());
                reports.push(report);
                continue;
            }
        };
        report.driver = match src.driver() {
            Ok(d) => Step::Ok(d),
            Err(e) => Step::Failed(e.to_string()),
        };
        if !report.driver.is_failed() {
            match src.server_info(args.timeout).await {
                Ok(info) => {
                    report.server_version = Step::Ok(info.version);
                    report.round_trip_ms = Some(round_ms(info.round_trip));
                    if let Some(q) = &query {
                        report.query = Some(match src.query(q, args.timeout).await {
                            Ok(Cell::Number(v)) => match crate::engine::poller::finite(v) {
                                Ok(v) => Step::Ok(v.to_string()),
                                Err(e) => Step::Failed(e),
                            },
                            Ok(Cell::Null) => {
                                Step::Ok("NULL (an error unless ignoreNullValues: \"true\")".into())
                            }
                            Ok(Cell::NoRows) => Step::Ok(
                                "no rows (an error unless ignoreNullValues: \"true\")".into(),
                            ),
                            Err(e) => Step::Failed(e.to_string()),
                        });
                    }
                }
                Err(e) => report.server_version = Step::Failed(e.to_string()),
            }
        }
        reports.push(report);
    }
    let tls: Vec<TlsReport> = config
        .tls
        .as_ref()
        .map(crate::tls::inspect)
        .unwrap_or_default()
        .into_iter()
        .map(|c| TlsReport {
            file: c.what,
            check: match c.outcome {
                Ok(v) => Step::Ok(v),
                Err(e) => Step::Failed(e),
            },
        })
        .collect();
    let ok = reports.iter().all(|r| {
        !r.driver.is_failed()
            && !r.server_version.is_failed()
            && !r.query.as_ref().is_some_and(Step::is_failed)
    }) && tls.iter().all(|t| !t.check.is_failed());
    Ok(Report {
        ok,
        connections: reports,
        tls,
    })
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// The table for people: one line per connection, then the failures in full.
pub fn render_table(report: &Report) -> String {
    let cell = |s: &Step<String>| match s {
        Step::Ok(v) => v.clone(),
        Step::Failed(_) => "FAILED".into(),
        Step::Skipped => "-".into(),
    };
    let mut rows = vec![vec![
        "CONNECTION".to_string(),
        "KIND".into(),
        "DRIVER".into(),
        "SERVER".into(),
        "ROUND-TRIP".into(),
        "QUERY".into(),
    ]];
    for r in &report.connections {
        rows.push(vec![
            r.name.clone(),
            r.kind.clone(),
            cell(&r.driver),
            cell(&r.server_version),
            r.round_trip_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into()),
            r.query.as_ref().map(cell).unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count().min(60))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| {
                let c: String = c.chars().take(60).collect();
                format!("{c:<w$}")
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for r in &report.connections {
        let steps = [
            ("driver", Some(&r.driver)),
            ("connect", Some(&r.server_version)),
            ("query", r.query.as_ref()),
        ];
        for (what, step) in steps {
            if let Some(Step::Failed(e)) = step {
                out.push_str(&format!("\n{} ({}): {what} failed: {e}\n", r.name, r.url));
            }
        }
    }
    if !report.tls.is_empty() {
        out.push_str("\nTLS\n");
        for t in &report.tls {
            match &t.check {
                Step::Ok(v) => out.push_str(&format!("  {}: OK, {v}\n", t.file)),
                Step::Failed(e) => out.push_str(&format!("  {}: FAILED: {e}\n", t.file)),
                Step::Skipped => {}
            }
        }
    }
    out.push_str(if report.ok {
        "\nall connections OK\n"
    } else {
        "\nsome checks FAILED\n"
    });
    out
}
