//! The one small trait every database sits behind, and how a connection's config becomes one.
//!
//! A [`Source`] runs one query with a timeout that it enforces on the database side, and returns
//! the first column of its one row as a [`Cell`]. A query must produce exactly one row (or none):
//! every source fetches at most two rows and answers [`SourceError::ManyRows`] for a second one,
//! because scaling on "the first row of many" is scaling on noise. What a NULL or an empty result
//! means is the engine's decision (`ignoreNullValues`), not the source's.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::config::{ConnectionConfig, ConnectionUrl};

pub mod oracle;
pub mod postgres;
pub mod sqlite;
pub mod wake;

/// The first column of the query's only row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell {
    Number(f64),
    Null,
    NoRows,
}

/// Why a query produced no value. Messages are lowercase fragments that say what the database
/// said; they never carry credentials.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    #[error("query timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("query timed out after {}, {} of it waiting for a free database session (pool of {size})", humantime::format_duration(*timeout), humantime::format_duration(*waited))]
    TimeoutAfterWait {
        timeout: Duration,
        waited: Duration,
        size: usize,
    },
    #[error("no free database session within {} (all {size} of the pool busy)", humantime::format_duration(*waited))]
    PoolTimeout { waited: Duration, size: usize },
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Query(String),
    #[error("first column is not numeric: {0}")]
    NotNumeric(String),
    /// A second row came back. Only two rows are ever fetched, so a huge result costs nothing.
    #[error(
        "the query returned more than one row; orascale scales on one number: use `select count(*) from (…)`, an aggregate, or `{first_row}` if you mean the first row"
    )]
    ManyRows {
        /// The dialect's way to keep only the first row.
        first_row: &'static str,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl SourceError {
    /// A short, bounded label for metrics: `timeout` or `error`.
    pub fn result_label(&self) -> &'static str {
        match self {
            SourceError::Timeout(_)
            | SourceError::TimeoutAfterWait { .. }
            | SourceError::PoolTimeout { .. } => "timeout",
            _ => "error",
        }
    }
}

/// What `orascale check` reports about a database.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    pub version: String,
    /// Round-trip time of a trivial query (`select 1`, `select 1 from dual`).
    pub round_trip: Duration,
}

/// The connection pool of a source, for the pool gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// The most sessions (or concurrent queries) allowed.
    pub max: usize,
    /// Sessions open now.
    pub size: usize,
    /// Sessions running a query now.
    pub in_use: usize,
    /// Polls waiting for a session.
    pub waiting: usize,
}

impl From<deadpool::Status> for PoolStatus {
    fn from(s: deadpool::Status) -> Self {
        PoolStatus {
            max: s.max_size,
            size: s.size,
            in_use: s.size.saturating_sub(s.available),
            waiting: s.waiting,
        }
    }
}

/// A database that can answer one scalar query.
pub trait Source: Send + Sync + 'static {
    /// `sqlite`, `postgres` or `oracle`.
    fn kind(&self) -> &'static str;

    /// Whether the driver (and any client library it loads) is usable, and its version.
    fn driver(&self) -> Result<String, SourceError>;

    /// The pool's state now.
    fn pool(&self) -> PoolStatus;

    /// Connects, reads the server version and times a trivial query.
    fn server_info<'a>(
        &'a self,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ServerInfo, SourceError>>;

    /// Stops the source's background tasks (connection drivers, cancel requests) and waits for
    /// them to end; queries after this fail. At shutdown, after the pollers have stopped.
    fn close(&self) -> BoxFuture<'_, ()> {
        futures::future::ready(()).boxed()
    }

    /// Subscribes to the database's wake-ups on `channel` (PostgreSQL LISTEN/NOTIFY): the
    /// returned [`wake::Wake`] fires when a notification arrives. Never blocks; sources without
    /// wake-ups say so.
    fn wake(&self, channel: &str) -> Result<wake::Wake, SourceError> {
        let _ = channel;
        Err(SourceError::Unsupported(format!(
            "{} connections have no wake-ups (notifyChannel needs a postgres connection)",
            self.kind()
        )))
    }

    /// The state of the source's wake-ups, if it has any.
    fn wake_status(&self) -> Option<wake::WakeStatus> {
        None
    }

    /// Runs `sql` and returns the first column of its only row; a second row is
    /// [`SourceError::ManyRows`], detected without fetching more than two rows. The source
    /// cancels the query on the database once `timeout` has passed (waiting for a free
    /// connection counts against it) and then returns [`SourceError::Timeout`].
    fn query<'a>(
        &'a self,
        sql: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Cell, SourceError>>;
}

/// Opens the source of one configured connection. Opening does no I/O: connections are made
/// by the first poll, so a database that is down at startup does not stop the scaler.
pub fn open(conn: &ConnectionConfig) -> Result<Arc<dyn Source>, SourceError> {
    match &conn.url {
        ConnectionUrl::Sqlite(target) => Ok(Arc::new(
            sqlite::Sqlite::new(&conn.name, target.clone(), conn.pool_size)
                .with_pool_timeout(conn.pool_timeout),
        )),
        ConnectionUrl::Postgres { url } => Ok(Arc::new(postgres::Postgres::new(conn, url)?)),
        ConnectionUrl::Oracle {
            user,
            password,
            connect_string,
        } => Ok(Arc::new(oracle::Oracle::new(
            conn,
            user,
            password.as_deref(),
            connect_string,
        )?)),
    }
}

/// `start + d`, saturating instead of panicking: no duration a user can write overflows a deadline.
pub fn deadline_after(start: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    start
        .checked_add(d)
        .or_else(|| start.checked_add(crate::config::defaults::DURATION_CEILING))
        .unwrap_or(start)
}

/// Takes a session from `pool`, waiting until `deadline` or, when the connection sets one, its
/// `pool_timeout` after `started`, whichever comes first. Waiting never outlasts the query's
/// budget, and a full pool is reported as such.
pub async fn checkout<M>(
    pool: &deadpool::managed::Pool<M>,
    started: tokio::time::Instant,
    deadline: tokio::time::Instant,
    pool_timeout: Option<Duration>,
    kind: &str,
) -> Result<deadpool::managed::Object<M>, SourceError>
where
    M: deadpool::managed::Manager<Error = SourceError>,
{
    let wait_until = pool_timeout.map_or(deadline, |t| deadline.min(deadline_after(started, t)));
    match tokio::time::timeout_at(wait_until, pool.get()).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(deadpool::managed::PoolError::Backend(e))) => Err(e),
        Ok(Err(e)) => Err(SourceError::Connect(format!("{kind} pool: {e}"))),
        Err(_) => {
            let status = pool.status();
            let waited = Duration::from_millis((wait_until - started).as_millis() as u64);
            Err(if status.size >= status.max_size {
                SourceError::PoolTimeout {
                    waited,
                    size: status.max_size,
                }
            } else {
                SourceError::Timeout(waited)
            })
        }
    }
}

/// Where a connection's password comes from, checked for every new database session:
/// `password_file` (re-read each time, so a rotated Kubernetes Secret is picked up), else
/// `ORASCALE_<NAME>_PASSWORD`, else the URL.
#[derive(Clone)]
pub struct PasswordSource {
    file: Option<std::path::PathBuf>,
    env: String,
    url: Option<Vec<u8>>,
}

impl PasswordSource {
    pub fn new(conn: &ConnectionConfig, url: Option<Vec<u8>>) -> Self {
        PasswordSource {
            file: conn.password_file.clone(),
            env: conn.password_env(),
            url,
        }
    }

    pub fn get(&self) -> Result<Option<Vec<u8>>, SourceError> {
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                SourceError::Connect(format!("password_file {}: {e}", path.display()))
            })?;
            // Secrets mounted from Kubernetes often end with a newline.
            return Ok(Some(
                text.trim_end_matches(['\n', '\r']).as_bytes().to_vec(),
            ));
        }
        if let Ok(pw) = std::env::var(&self.env)
            && !pw.is_empty()
        {
            return Ok(Some(pw.into_bytes()));
        }
        Ok(self.url.clone())
    }
}

/// Numeric text (`"42"`, `" 3.5 "`, `"1e3"`) → f64; anything else is [`SourceError::NotNumeric`].
pub fn parse_numeric_text(text: &str) -> Result<f64, SourceError> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => {
            let shown: String = text.chars().take(40).collect();
            Err(SourceError::NotNumeric(format!("text {shown:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_text() {
        for (text, want) in [
            ("42", 42.0),
            (" 3.5 ", 3.5),
            ("1e3", 1000.0),
            ("-2", -2.0),
            ("0010", 10.0),
        ] {
            assert_eq!(parse_numeric_text(text).unwrap(), want, "{text}");
        }
        for text in ["", "abc", "12abc", "NaN", "inf", "-infinity", "1,5"] {
            assert!(
                matches!(parse_numeric_text(text), Err(SourceError::NotNumeric(_))),
                "{text}"
            );
        }
    }
}
