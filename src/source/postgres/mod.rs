//! The PostgreSQL source: `tokio-postgres` (async, no blocking threads) behind a small
//! `deadpool` pool per connection.
//!
//! - Sessions are read-only (`SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY`) and carry a
//!   `statement_timeout` backstop, so nothing a trigger runs can write or run forever.
//! - The query timeout covers waiting for a pooled session and the query. When it expires the
//!   query is cancelled on the server (a cancel request, awaited) and the session is discarded,
//!   so the query is gone from `pg_stat_activity` when the poll reports the timeout.
//! - A session whose connection broke (server restarted, backend terminated) is discarded and
//!   the next poll makes a new one; recycling is a local check, no round-trip.
//! - Statements are prepared once per session and cached. A database error drops the statement
//!   from the cache, and a cached one that fails is prepared again and retried once in the same
//!   poll: the server invalidates statements behind our back (a column's type changed, a
//!   pooler's `DISCARD ALL`), and a stale cache must not fail every poll until a restart.
//! - The password comes from `password_file` (re-read for every new session), else
//!   `ORASCALE_<NAME>_PASSWORD`, else the URL.
//! - Any numeric column (int2/4/8, float4/8, numeric, oid) and numeric text convert to f64, so
//!   users never have to cast `count(*)` (int8) or `sum(numeric)`.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, Pool, RecycleError, RecycleResult};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

mod listen;

use super::checkout;
use super::{
    Cell, PasswordSource, PoolStatus, ServerInfo, Source, SourceError, parse_numeric_text,
};
use crate::config::ConnectionConfig;

/// Server-side backstop for every statement of a session, whatever the trigger's timeout:
/// even a lost cancel request cannot leave a query running longer.
const STATEMENT_TIMEOUT_BACKSTOP: Duration = Duration::from_secs(300);
/// How long a cancel request may take before we give up on it (the session is dropped anyway).
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);
/// Prepared statements kept per session.
const STATEMENT_CACHE: usize = 64;

pub struct Postgres {
    name: String,
    pool: Pool<Sessions>,
    /// The sessions polls may ask the pool for (fewer when the server refuses more).
    slots: Arc<super::Slots>,
    pool_size: usize,
    pool_timeout: Option<Duration>,
    tls: Tls,
    /// Connection drivers and cancel requests: tracked, and stopped with the source.
    tasks: Tasks,
    /// LISTEN/NOTIFY wake-ups: opens the dedicated session the engine's hub asks for.
    listener: Arc<listen::PgListener>,
}

/// The background tasks of one source. Cancelling `closed` ends every connection driver (the
/// sessions' sockets close) and every pending cancel request.
#[derive(Clone, Default)]
struct Tasks {
    tracker: tokio_util::task::TaskTracker,
    closed: tokio_util::sync::CancellationToken,
}

impl Tasks {
    /// Runs `f` on the tracker until it ends or the source closes. Outside a runtime (a source
    /// dropped late) there is nothing to run it on, and nothing to clean up either.
    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let closed = self.closed.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = closed.cancelled() => {}
                _ = f => {}
            }
        });
    }
}

impl Tasks {
    /// Ends every task and takes no more; `tracker.wait()` then completes.
    fn close(&self) {
        self.closed.cancel();
        self.tracker.close();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.tasks.close();
    }
}

/// How to make a session: the parsed URL without the password, where the password comes from,
/// and TLS.
#[derive(Clone)]
struct Sessions {
    name: String,
    config: tokio_postgres::Config,
    password: PasswordSource,
    tls: Tls,
    tasks: Tasks,
}

#[derive(Clone)]
enum Tls {
    Off,
    Rustls(MakeRustlsConnect),
}

/// One pooled session and its prepared statements.
pub struct Session {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Postgres {
    /// Parses the URL and builds the pool; connects nothing yet.
    pub fn new(conn: &ConnectionConfig, url: &str) -> Result<Self, SourceError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            SourceError::Unsupported(format!(
                "connection {:?}: invalid PostgreSQL URL {}: {}",
                conn.name,
                crate::config::redact_url(url),
                e.source()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string())
            ))
        })?;
        let url_password = config.get_password().map(<[u8]>::to_vec);
        config.password(Vec::<u8>::new());
        if config.get_application_name().is_none() {
            config.application_name("orascale");
        }
        let tls = match config.get_ssl_mode() {
            SslMode::Disable => Tls::Off,
            _ => Tls::Rustls(rustls_connector(conn)?),
        };
        let tasks = Tasks::default();
        // The listening session says what it is in pg_stat_activity, unless the URL names it.
        let mut listener_config = config.clone();
        if config.get_application_name() == Some("orascale") {
            listener_config.application_name("orascale-listener");
        }
        let sessions = Sessions {
            name: conn.name.clone(),
            config,
            password: PasswordSource::new(conn, url_password),
            tls: tls.clone(),
            tasks: tasks.clone(),
        };
        let pool = Pool::builder(sessions.clone())
            .max_size(conn.pool_size.max(1))
            .build()
            .map_err(|e| SourceError::Unsupported(format!("connection {:?}: {e}", conn.name)))?;
        let slots = Arc::new(super::Slots::new(conn.pool_size));
        let listener = Arc::new(listen::PgListener {
            sessions,
            config: listener_config,
            pool: pool.clone(),
            slots: slots.clone(),
        });
        Ok(Postgres {
            name: conn.name.clone(),
            slots,
            pool,
            pool_size: conn.pool_size.max(1),
            pool_timeout: conn.pool_timeout,
            tls,
            tasks,
            listener,
        })
    }

    async fn run(&self, sql: &str, timeout: Duration) -> Result<Cell, SourceError> {
        let started = Instant::now();
        let deadline = super::deadline_after(started, timeout);
        let super::Checked {
            session,
            slot: _slot,
            waited,
        } = checkout(
            &self.pool,
            &self.slots,
            started,
            deadline,
            self.pool_timeout,
            "postgres",
        )
        .await?;
        let mut flight = InFlight {
            cancel: Some((session.client.cancel_token(), self.tls.clone())),
            session: Some(session),
            tasks: self.tasks.clone(),
        };
        let session = flight
            .session
            .as_mut()
            .expect("session present until landed");
        match tokio::time::timeout_at(deadline, first_cell(&self.name, session, sql)).await {
            Ok(result) => {
                let session = flight.land();
                if session.client.is_closed() {
                    // The server went away under us: never hand this session out again.
                    let _ = Object::take(session);
                }
                result
            }
            Err(_) => {
                // Cancel on the server, then drop the session: its connection may still be
                // busy delivering the cancelled query's error.
                let (token, tls) = flight.cancel.take().expect("armed");
                let sent = tokio::time::timeout(CANCEL_TIMEOUT, cancel_query(&token, &tls)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    tracing::warn!(connection = %self.name, "postgres: cancel request for a timed-out query failed; the session is dropped and statement_timeout backstops it");
                }
                // Dropping the armed-less guard discards the session.
                drop(flight);
                // Say so when most of the budget went to waiting: the pool is the bottleneck.
                Err(SourceError::timed_out(timeout, waited, self.pool_size))
            }
        }
    }
}

async fn cancel_query(
    token: &tokio_postgres::CancelToken,
    tls: &Tls,
) -> Result<(), tokio_postgres::Error> {
    match tls {
        Tls::Off => token.cancel_query(NoTls).await,
        Tls::Rustls(tls) => token.cancel_query(tls.clone()).await,
    }
}

/// A query on its way. If the poll is abandoned before it lands (shutdown, a dropped future)
/// the query is cancelled on the server and the session discarded, so nothing keeps running.
struct InFlight {
    session: Option<Object<Sessions>>,
    cancel: Option<(tokio_postgres::CancelToken, Tls)>,
    tasks: Tasks,
}

impl InFlight {
    /// The query finished: hand the session back to the caller, nothing to cancel.
    fn land(&mut self) -> Object<Sessions> {
        self.cancel = None;
        self.session.take().expect("lands once")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = Object::take(session);
        }
        if let Some((token, tls)) = self.cancel.take() {
            self.tasks.spawn(async move {
                let _ = tokio::time::timeout(CANCEL_TIMEOUT, cancel_query(&token, &tls)).await;
            });
        }
    }
}

impl Source for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            self.tasks.close();
            self.tasks.tracker.wait().await;
        }
        .boxed()
    }

    fn listener(&self) -> Option<Arc<dyn super::wake::Listener>> {
        Some(self.listener.clone())
    }

    fn slots(&self) -> Option<Arc<super::Slots>> {
        Some(self.slots.clone())
    }

    fn driver(&self) -> Result<String, SourceError> {
        Ok("tokio-postgres (native Rust, no client library)".into())
    }

    fn pool(&self) -> PoolStatus {
        self.slots.status(self.pool.status())
    }

    fn server_info<'a>(
        &'a self,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ServerInfo, SourceError>> {
        async move {
            let deadline = super::deadline_after(Instant::now(), timeout);
            let super::Checked {
                session,
                slot: _slot,
                ..
            } = checkout(
                &self.pool,
                &self.slots,
                Instant::now(),
                deadline,
                self.pool_timeout,
                "postgres",
            )
            .await?;
            let err = |e: tokio_postgres::Error| {
                SourceError::Query(format!("postgres: {}", describe(&e)))
            };
            let version: String = tokio::time::timeout_at(
                deadline,
                session.client.query_one("select version()", &[]),
            )
            .await
            .map_err(|_| SourceError::Timeout(timeout))?
            .map_err(err)?
            .get(0);
            let started = std::time::Instant::now();
            tokio::time::timeout_at(deadline, session.client.query_one("select 1", &[]))
                .await
                .map_err(|_| SourceError::Timeout(timeout))?
                .map_err(err)?;
            Ok(ServerInfo {
                version,
                round_trip: started.elapsed(),
            })
        }
        .boxed()
    }

    fn query<'a>(
        &'a self,
        sql: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Cell, SourceError>> {
        self.run(sql, timeout).boxed()
    }
}

impl Sessions {
    /// Resolves the password and opens one connection, its I/O driven on the source's tasks.
    /// With `listen`, the connection's notifications go to its `Deliver` and its `Sender`
    /// learns why the connection ended.
    async fn open(
        &self,
        mut config: tokio_postgres::Config,
        listen: Option<Listening>,
    ) -> Result<Client, SourceError> {
        // A password file is read on the blocking pool, never on a runtime worker.
        let password = self.password.clone();
        let pw = tokio::task::spawn_blocking(move || password.get())
            .await
            .map_err(|e| SourceError::Connect(format!("reading the password failed: {e}")))??;
        if let Some(pw) = pw {
            config.password(pw);
        }
        let connect_err =
            |e: tokio_postgres::Error| SourceError::Connect(format!("postgres: {}", describe(&e)));
        Ok(match &self.tls {
            Tls::Off => {
                let (client, connection) = config.connect(NoTls).await.map_err(connect_err)?;
                self.tasks
                    .spawn(drive(self.name.clone(), connection, listen));
                client
            }
            Tls::Rustls(tls) => {
                let (client, connection) =
                    config.connect(tls.clone()).await.map_err(connect_err)?;
                self.tasks
                    .spawn(drive(self.name.clone(), connection, listen));
                client
            }
        })
    }

    async fn connect(&self) -> Result<Client, SourceError> {
        let client = self.open(self.config.clone(), None).await?;
        client
            .batch_execute(&format!(
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; SET statement_timeout = {}",
                STATEMENT_TIMEOUT_BACKSTOP.as_millis()
            ))
            .await
            .map_err(|e| {
                SourceError::Connect(format!("postgres session setup: {}", describe(&e)))
            })?;
        // PostgreSQL 14+: notice a vanished client during a long query. Older servers lack it.
        let _ = client
            .batch_execute("SET client_connection_check_interval = 1000")
            .await;
        Ok(client)
    }
}

/// Where a listening session's notifications go, and who learns of its end.
type Listening = (super::wake::Deliver, tokio::sync::oneshot::Sender<String>);

/// Runs a connection's I/O until it closes. A listening connection is polled message by
/// message: awaiting it would drop its notifications.
async fn drive<S, T>(
    name: String,
    mut connection: tokio_postgres::Connection<S, T>,
    listen: Option<Listening>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some((deliver, lost)) = listen else {
        if let Err(e) = connection.await {
            tracing::debug!(connection = %name, error = %describe(&e), "postgres connection closed");
        }
        return;
    };
    let why = loop {
        match futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => deliver(n.channel()),
            Some(Ok(_)) => {} // a notice
            Some(Err(e)) => break describe(&e),
            None => break "the session was closed".to_string(),
        }
    };
    tracing::debug!(connection = %name, reason = %why, "postgres listening session ended");
    let _ = lost.send(why);
}

impl managed::Manager for Sessions {
    type Type = Session;
    type Error = SourceError;

    async fn create(&self) -> Result<Session, SourceError> {
        Ok(Session {
            client: self.connect().await?,
            statements: HashMap::new(),
        })
    }

    async fn recycle(&self, session: &mut Session, _: &Metrics) -> RecycleResult<SourceError> {
        if session.client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        Ok(())
    }
}

/// Runs `sql` on the session ([`attempt`]); when a statement from the session's cache fails with
/// a database error, it is prepared again and run once more. A cached statement goes stale when
/// the server forgets it or its plan: `ALTER TABLE … ALTER COLUMN … TYPE` ("cached plan must not
/// change result type", 0A000) or a pooler's `DISCARD ALL` (prepared statement "s0" does not
/// exist, 26000). Without the retry every poll on that session would fail until a restart.
async fn first_cell(name: &str, session: &mut Session, sql: &str) -> Result<Cell, SourceError> {
    let cached = session.statements.contains_key(sql);
    match attempt(session, sql).await {
        Ok(cell) => cell,
        Err(e) if cached && !session.client.is_closed() => {
            tracing::info!(connection = %name, error = %describe(&e), "postgres: a cached statement failed; prepared it again and retried once");
            attempt(session, sql)
                .await
                .unwrap_or_else(|e| Err(query_error(&e)))
        }
        Err(e) => Err(query_error(&e)),
    }
}

fn query_error(e: &tokio_postgres::Error) -> SourceError {
    SourceError::Query(format!("postgres: {}", describe(e)))
}

/// Prepares (cached per session), checks there is one column, and reads it from the only row.
/// The statement runs in a portal that fetches at most two rows, so a `select *` over a huge
/// table is neither read nor sent: the server stops after the second row. A portal needs a
/// transaction block; the session is read-only and the transaction is rolled back when dropped
/// (sent, not awaited: the next statement on this session queues behind it). Any database error
/// drops the statement from the cache (it may be the cause), and is the outer `Err`.
async fn attempt(
    session: &mut Session,
    sql: &str,
) -> Result<Result<Cell, SourceError>, tokio_postgres::Error> {
    let statement = match session.statements.get(sql) {
        Some(s) => s.clone(),
        None => {
            let s = session.client.prepare(sql).await?;
            if session.statements.len() >= STATEMENT_CACHE {
                session.statements.clear();
            }
            session.statements.insert(sql.to_string(), s.clone());
            s
        }
    };
    let result = run_statement(&mut session.client, &statement).await;
    if result.is_err() {
        session.statements.remove(sql);
    }
    result
}

async fn run_statement(
    client: &mut Client,
    statement: &Statement,
) -> Result<Result<Cell, SourceError>, tokio_postgres::Error> {
    // One column, known from the prepared statement's description before anything runs.
    if let Err(e) = super::one_column("postgres", statement.columns().iter().map(|c| c.name())) {
        return Ok(Err(e));
    }
    let tx = client.transaction().await?;
    let portal = tx.bind(statement, &[]).await?;
    let rows = tx.query_portal(&portal, 2).await?;
    let row = match rows.as_slice() {
        [] => return Ok(Ok(Cell::NoRows)),
        [row] => row,
        [_, _, ..] => {
            return Ok(Err(SourceError::ManyRows {
                first_row: "limit 1",
            }));
        }
    };
    Ok(match row.try_get::<_, PgValue>(0)? {
        PgValue::Null => Ok(Cell::Null),
        PgValue::Number(v) => Ok(Cell::Number(v)),
        PgValue::Text(t) => parse_numeric_text(&t).map(Cell::Number),
        PgValue::Other(ty) => Err(SourceError::NotNumeric(format!("a value of type {ty}"))),
    })
}

/// The error's own message with its SQLSTATE, never the connection parameters.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A first column decoded by its type.
#[derive(Debug, PartialEq)]
enum PgValue {
    Null,
    Number(f64),
    Text(String),
    Other(String),
}

impl<'a> FromSql<'a> for PgValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(match *ty {
            Type::INT2 => PgValue::Number(f64::from(i16::from_sql(ty, raw)?)),
            Type::INT4 => PgValue::Number(f64::from(i32::from_sql(ty, raw)?)),
            Type::INT8 => PgValue::Number(i64::from_sql(ty, raw)? as f64),
            Type::OID => PgValue::Number(f64::from(u32::from_sql(ty, raw)?)),
            Type::FLOAT4 => finite(f64::from(f32::from_sql(ty, raw)?)),
            Type::FLOAT8 => finite(f64::from_sql(ty, raw)?),
            Type::NUMERIC => match decode_numeric(raw)? {
                Some(v) => finite(v),
                None => PgValue::Other("numeric NaN".into()),
            },
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                PgValue::Text(String::from_utf8_lossy(raw).into_owned())
            }
            ref other => PgValue::Other(other.name().to_string()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(PgValue::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn finite(v: f64) -> PgValue {
    if v.is_finite() {
        PgValue::Number(v)
    } else {
        PgValue::Other(format!("non-finite number {v}"))
    }
}

/// PostgreSQL's binary NUMERIC: `ndigits, weight, sign, dscale` (i16/i16/u16/u16) then base-10000
/// digits. Converted through decimal text so the f64 is correctly rounded. `None` for NaN.
fn decode_numeric(raw: &[u8]) -> Result<Option<f64>, Box<dyn StdError + Sync + Send>> {
    let word = |i: usize| -> Result<u16, Box<dyn StdError + Sync + Send>> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".into())
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i16 as i64;
    let sign = word(2)?;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok(None),
        0xD000 => return Ok(Some(f64::INFINITY)),
        0xF000 => return Ok(Some(f64::NEG_INFINITY)),
        other => return Err(format!("invalid numeric sign {other:#x}").into()),
    }
    if ndigits == 0 {
        return Ok(Some(0.0));
    }
    let mut mantissa = String::with_capacity(ndigits * 4 + 1);
    if sign == 0x4000 {
        mantissa.push('-');
    }
    for i in 0..ndigits {
        let d = word(4 + i)?;
        if d > 9999 {
            return Err(format!("invalid numeric digit {d}").into());
        }
        mantissa.push_str(&format!("{d:04}"));
    }
    let exponent = 4 * (weight - ndigits as i64 + 1);
    Ok(Some(format!("{mantissa}e{exponent}").parse::<f64>()?))
}

fn rustls_connector(conn: &ConnectionConfig) -> Result<MakeRustlsConnect, SourceError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &conn.ca_file {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
            SourceError::Unsupported(format!(
                "connection {:?}: ca_file {}: {e}",
                conn.name,
                path.display()
            ))
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| {
                SourceError::Unsupported(format!(
                    "connection {:?}: ca_file {}: {e}",
                    conn.name,
                    path.display()
                ))
            })?;
            roots.add(cert).map_err(|e| {
                SourceError::Unsupported(format!(
                    "connection {:?}: ca_file {}: {e}",
                    conn.name,
                    path.display()
                ))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::Unsupported(format!("connection {:?}: tls: {e}", conn.name)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes like PostgreSQL's numeric_send.
    fn numeric(ndigits: &[u16], weight: i16, negative: bool) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((ndigits.len() as u16).to_be_bytes());
        v.extend(weight.to_be_bytes());
        v.extend((if negative { 0x4000u16 } else { 0 }).to_be_bytes());
        v.extend(0u16.to_be_bytes());
        for d in ndigits {
            v.extend(d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_decoding() {
        let cases: &[(&[u16], i16, bool, f64)] = &[
            (&[], 0, false, 0.0),
            (&[42], 0, false, 42.0),
            (&[1, 2345], 1, false, 12345.0),
            (&[1, 2345, 6700], 1, false, 12345.67),
            (&[5000], -1, false, 0.5),
            (&[12], -1, true, -0.0012),
            (&[12], -2, false, 1.2e-7),
            (&[1], 3, false, 1e12),
        ];
        for (digits, weight, neg, want) in cases {
            let got = decode_numeric(&numeric(digits, *weight, *neg))
                .unwrap()
                .unwrap();
            assert_eq!(got, *want, "{digits:?} w={weight}");
        }
        let mut nan = numeric(&[], 0, false);
        nan[4] = 0xC0;
        assert_eq!(decode_numeric(&nan).unwrap(), None);
        assert!(decode_numeric(&[0, 1]).is_err(), "truncated");
    }

    #[test]
    fn values_by_type() {
        let v = |ty: Type, raw: &[u8]| PgValue::from_sql(&ty, raw).unwrap();
        assert_eq!(v(Type::INT2, &7i16.to_be_bytes()), PgValue::Number(7.0));
        assert_eq!(v(Type::INT4, &(-7i32).to_be_bytes()), PgValue::Number(-7.0));
        assert_eq!(
            v(Type::INT8, &9_000_000_000i64.to_be_bytes()),
            PgValue::Number(9e9)
        );
        assert_eq!(v(Type::FLOAT4, &1.5f32.to_be_bytes()), PgValue::Number(1.5));
        assert_eq!(
            v(Type::FLOAT8, &2.25f64.to_be_bytes()),
            PgValue::Number(2.25)
        );
        assert_eq!(
            v(Type::FLOAT8, &f64::NAN.to_be_bytes()),
            PgValue::Other("non-finite number NaN".into())
        );
        assert_eq!(v(Type::TEXT, b" 12 "), PgValue::Text(" 12 ".into()));
        assert_eq!(v(Type::BOOL, &[1]), PgValue::Other("bool".into()));
        assert_eq!(PgValue::from_sql_null(&Type::INT8).unwrap(), PgValue::Null);
    }

    #[test]
    fn url_errors_hide_the_password() {
        let conn =
            ConnectionConfig::new("pg", crate::config::parse_url("postgres://h/db").unwrap());
        let err = Postgres::new(&conn, "postgres://app:s3cret@h:notaport/db")
            .err()
            .unwrap();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(err.to_string().contains("connection \"pg\""), "{err}");
    }
}
