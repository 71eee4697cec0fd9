//! The Oracle source: the `oracle` crate (ODPI-C, which loads Oracle Instant Client at run
//! time) behind a `deadpool` pool of sessions per connection.
//!
//! - ODPI-C is blocking: connecting and every query run in `spawn_blocking`, with the pooled
//!   session moved into the blocking task, so a slow network never blocks a runtime worker.
//! - A connect cannot be cancelled. Oracle Net bounds it ([`with_connect_timeout`] writes
//!   `CONNECT_TIMEOUT` into the connect string), and at most [`CONNECTS_IN_FLIGHT`] run per
//!   connection: the blocking thread holds its permit until the connect really returns, so a
//!   poll that gave up still counts and the next one waits (on no thread) instead of piling up
//!   threads against a black-holed host. The connect itself is a seam ([`Connect`]) so tests
//!   can stand in for such a host.
//! - The query timeout covers waiting for a session and the query. The remaining time becomes the
//!   session's `call_timeout`, which Oracle enforces per round-trip (DPI-1067 on expiry). Should a
//!   call still not return, `break_execution()` is sent from another thread. A session that
//!   timed out or lost its connection (ORA-03113, ORA-03114, ORA-03135, DPI-1010, DPI-1080 …) is
//!   discarded, never returned to the pool.
//! - Statements go through the OCI statement cache (20 per session); at most two rows are
//!   fetched (prefetch and array size 2), the second only to refuse it; `Statement::query` refuses anything that is not a query before
//!   executing it, and autocommit is off, so nothing a trigger runs is ever committed.
//! - Without Instant Client every connect fails with DPI-1047; that becomes one startup warning
//!   and an UNAVAILABLE answer carrying the install hint ([`CLIENT_MISSING_HINT`]).
//!
//! - Wake-ups: [`listen`] is the connection's `DBMS_ALERT` listener, one dedicated session on
//!   its own blocking thread, opened through the same [`Connect`] seam and connect slots.
//!
//! The conversion, one-column and error-classification rules are pure functions over the
//! driver's types, column names and error codes ([`column_kind`], [`to_cell`],
//! [`super::one_column`], [`Fault::classify`]), unit-tested without a database.

use std::sync::Arc;
use std::time::Duration;

pub mod listen;

use deadpool::managed::{self, Metrics, Object, Pool, RecycleError, RecycleResult};
use futures::FutureExt;
use futures::future::BoxFuture;
use oracle::sql_type::OracleType;
use oracle::{ConnStatus, Connection, Connector};
use tokio::time::Instant;

use super::checkout;
use super::{
    Cell, PasswordSource, PoolStatus, ServerInfo, Source, SourceError, parse_numeric_text,
};
use crate::config::ConnectionConfig;

/// What the operator must do when Instant Client cannot be loaded.
pub const CLIENT_MISSING_HINT: &str = "Oracle Instant Client not found: install instantclient-basic(lite) and set LD_LIBRARY_PATH, see docs/oracle.md";

/// Statements cached per session (the OCI statement cache).
const STATEMENT_CACHE: u32 = 20;
/// Oracle Net's bound on reaching the database (TCP, TLS, the listener's handshake), written
/// into EZConnect strings and connect descriptors ([`with_connect_timeout`]).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connects of one connection that may be in flight at once (fewer if `pool_size` is smaller).
/// A blocking connect cannot be cancelled: a poll that gives up leaves its thread running, and
/// without this bound polls against a black-holed host would pile such threads up to tokio's
/// blocking-thread cap, stalling every other blocking task of the process.
pub const CONNECTS_IN_FLIGHT: usize = 2;
/// Connects in flight across every Oracle connection of the process: connections made from
/// metadata credentials are one per distinct credential, so a per-connection bound alone would
/// let rotating credentials against a black-holed host take `2 × pollers` threads.
pub const CONNECTS_IN_FLIGHT_PROCESS: usize = 32;

/// The process-wide connect slots ([`CONNECTS_IN_FLIGHT_PROCESS`]).
fn process_connects() -> Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SLOTS
        .get_or_init(|| Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT_PROCESS)))
        .clone()
}
/// How long past the deadline we wait for a call before breaking it from another thread.
const BREAK_GRACE: Duration = Duration::from_secs(2);

pub struct Oracle {
    name: String,
    pool: Pool<Sessions>,
    /// The sessions polls may ask the pool for (fewer when the server refuses more).
    slots: Arc<super::Slots>,
    pool_size: usize,
    pool_timeout: Option<Duration>,
    /// The connection's `DBMS_ALERT` listener (wake-ups), opened by the engine's hub.
    listener: Arc<listen::OracleListener>,
}

struct Sessions {
    user: String,
    password: PasswordSource,
    connect_string: String,
    connect: Arc<dyn Connect>,
    /// Held by the blocking thread of each connect until it really returns.
    connects: Arc<tokio::sync::Semaphore>,
}

/// What one logon needs. Never printed: it holds the password.
pub struct Logon {
    pub user: String,
    pub password: String,
    /// With [`CONNECT_TIMEOUT`] applied where the form allows it.
    pub connect_string: String,
}

/// The blocking connect the pool calls on a blocking thread: ODPI-C's in production ([`Odpi`]),
/// any other in tests (there is no Instant Client to reach a real, or a black-holed, database).
pub trait Connect: Send + Sync + 'static {
    fn connect(&self, logon: &Logon) -> Result<Connection, oracle::Error>;
}

/// The real connect: ODPI-C, loading Instant Client on first use.
pub struct Odpi;

impl Connect for Odpi {
    fn connect(&self, logon: &Logon) -> Result<Connection, oracle::Error> {
        oracle::InitParams::new().init()?;
        let mut connector = Connector::new(
            logon.user.as_str(),
            logon.password.as_str(),
            logon.connect_string.as_str(),
        );
        connector.stmt_cache_size(STATEMENT_CACHE);
        // No user: authenticate with the wallet / OS (external authentication).
        if logon.user.is_empty() {
            connector.external_auth(true);
        }
        let conn = connector.connect()?;
        // Visible in v$session.module for DBAs.
        let _ = conn.set_module("orascale");
        Ok(conn)
    }
}

/// `connect_string` with Oracle Net's connect timeouts (`t`, in whole seconds, at least 1):
/// EZConnect gets `?connect_timeout=N&transport_connect_timeout=N` (EZConnect Plus, Instant
/// Client 19+), a `(DESCRIPTION=…)` gets `(CONNECT_TIMEOUT=N)(TRANSPORT_CONNECT_TIMEOUT=N)`. A
/// TNS alias is left alone (set `SQLNET.OUTBOUND_CONNECT_TIMEOUT` in `sqlnet.ora`), and so is a
/// string that already names a connect timeout: the operator's choice wins.
pub fn with_connect_timeout(connect_string: &str, t: Duration) -> String {
    let secs = t.as_secs().max(1);
    let s = connect_string.trim();
    if s.to_ascii_lowercase().contains("connect_timeout") {
        return s.to_string();
    }
    if let Some(after_paren) = s.strip_prefix('(') {
        // `(DESCRIPTION=`, spaces allowed around the keyword and the `=`.
        let after_paren = after_paren.trim_start();
        let (Some(keyword), Some(rest)) = (after_paren.get(..11), after_paren.get(11..)) else {
            return s.to_string();
        };
        match rest.trim_start().strip_prefix('=') {
            Some(body) if keyword.eq_ignore_ascii_case("DESCRIPTION") => {
                return format!(
                    "(DESCRIPTION=(CONNECT_TIMEOUT={secs})(TRANSPORT_CONNECT_TIMEOUT={secs}){body}"
                );
            }
            // A DESCRIPTION_LIST or anything else: leave it as written.
            _ => return s.to_string(),
        }
    }
    if s.contains('/') || s.contains(':') {
        let sep = if s.contains('?') { '&' } else { '?' };
        return format!("{s}{sep}connect_timeout={secs}&transport_connect_timeout={secs}");
    }
    s.to_string()
}

/// A pooled session; the `Arc` lets another thread break a call in progress.
pub struct Session {
    conn: Arc<Connection>,
}

/// Whether the Oracle client library can be loaded in this process; `Err` carries the
/// operator's hint. Cheap after the first call.
pub fn client_status() -> Result<String, SourceError> {
    oracle::InitParams::new()
        .init()
        .and_then(|_| oracle::Version::client())
        .map(|v| format!("Oracle Client {v}"))
        .map_err(|e| to_source_error(&e, Fault::classify_error(&e)))
}

impl Oracle {
    pub fn new(
        conn: &ConnectionConfig,
        user: &str,
        password: Option<&str>,
        connect_string: &str,
    ) -> Result<Self, SourceError> {
        Self::with_connect(conn, user, password, connect_string, Arc::new(Odpi))
    }

    /// [`Oracle::new`] with another blocking connect (tests).
    pub fn with_connect(
        conn: &ConnectionConfig,
        user: &str,
        password: Option<&str>,
        connect_string: &str,
        connect: Arc<dyn Connect>,
    ) -> Result<Self, SourceError> {
        let sessions = Sessions {
            user: user.to_string(),
            password: PasswordSource::new(conn, password.map(|p| p.as_bytes().to_vec())),
            connect_string: with_connect_timeout(connect_string, CONNECT_TIMEOUT),
            connect,
            connects: Arc::new(tokio::sync::Semaphore::new(
                CONNECTS_IN_FLIGHT.min(conn.pool_size.max(1)),
            )),
        };
        let alerts = Arc::new(listen::OdpiAlerts {
            connect: sessions.connect.clone(),
            user: sessions.user.clone(),
            password: sessions.password.clone(),
            connect_string: sessions.connect_string.clone(),
        });
        let connects = sessions.connects.clone();
        let pool: Pool<Sessions> = Pool::builder(sessions)
            .max_size(conn.pool_size.max(1))
            .build()
            .map_err(|e| SourceError::Unsupported(format!("connection {:?}: {e}", conn.name)))?;
        let slots = Arc::new(super::Slots::new(conn.pool_size));
        // Its own session, never a pooled one, made the same way and under the same connect
        // slots as the pool's, and only beside the pool's sessions (polls come first).
        let held = {
            let pool = pool.clone();
            move || pool.status().size
        };
        let listener = Arc::new(listen::OracleListener::new(
            alerts,
            user,
            connects,
            process_connects(),
            super::wake::PollsFirst::new(slots.clone(), held).closing_idle({
                let pool = pool.clone();
                move || close_one_idle(&pool)
            }),
        ));
        Ok(Oracle {
            name: conn.name.clone(),
            slots,
            pool,
            pool_size: conn.pool_size.max(1),
            pool_timeout: conn.pool_timeout,
            listener,
        })
    }

    /// Runs `work` on the session in a blocking thread with the call timeout set to what is
    /// left until `deadline`; discards the session when the outcome says it is unusable.
    async fn with_session<T: Send + 'static>(
        &self,
        timeout: Duration,
        work: impl FnOnce(&Connection) -> Result<T, oracle::Error> + Send + 'static,
    ) -> Result<T, SourceError> {
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
            "oracle",
        )
        .await?;
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let conn = session.conn.clone();
        // If this future is dropped mid-call (shutdown), break the call and discard the session:
        // it must never go back to the pool while a blocking thread still uses it.
        let mut flight = InFlight {
            session: Some(session),
            armed: true,
        };
        let job = tokio::task::spawn_blocking(move || {
            conn.set_call_timeout(Some(remaining))?;
            work(&conn)
        });
        tokio::pin!(job);
        let outcome = tokio::select! {
            joined = &mut job => joined,
            _ = tokio::time::sleep_until(super::deadline_after(deadline, BREAK_GRACE)) => {
                // The call timeout did not fire (a hung network, an old client): break the call
                // from here, and never reuse this session.
                tracing::warn!(connection = %self.name, "oracle: call did not return after its timeout; sent a break and dropped the session");
                drop(flight);
                // As the other timeout paths: a budget mostly spent waiting for the session is
                // a sizing problem (`pool_timeout`), not a slow query.
                return Err(SourceError::timed_out(timeout, waited, self.pool_size));
            }
        };
        let session = flight.land();
        let result = match outcome {
            Ok(r) => r,
            Err(join) => {
                discard(session);
                return Err(SourceError::Query(format!(
                    "oracle query task failed: {join}"
                )));
            }
        };
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                let fault = Fault::classify_error(&e);
                if fault.discards_session() {
                    discard(session);
                }
                Err(match fault {
                    Fault::Timeout => SourceError::timed_out(timeout, waited, self.pool_size),
                    _ => to_source_error(&e, fault),
                })
            }
        }
    }
}

/// Closes one idle session of `pool`, on a blocking thread (an Oracle logoff is a
/// round-trip): false when every session is in use.
fn close_one_idle(pool: &Pool<Sessions>) -> bool {
    let Some(session) = super::take_one_idle(pool) else {
        return false;
    };
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn_blocking(move || drop(session));
    }
    true
}

/// A call on its way; see `with_session`.
struct InFlight {
    session: Option<Object<Sessions>>,
    armed: bool,
}

impl InFlight {
    fn land(&mut self) -> Object<Sessions> {
        self.armed = false;
        self.session.take().expect("lands once")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if self.armed {
                let conn = session.conn.clone();
                if tokio::runtime::Handle::try_current().is_ok() {
                    tokio::task::spawn_blocking(move || conn.break_execution());
                }
            }
            discard(session);
        }
    }
}

/// Takes the session out of the pool and closes it off the runtime.
fn discard(session: Object<Sessions>) {
    let s = Object::take(session);
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || drop(s));
        }
        Err(_) => drop(s),
    }
}

impl Source for Oracle {
    fn kind(&self) -> &'static str {
        "oracle"
    }

    fn query<'a>(
        &'a self,
        sql: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Cell, SourceError>> {
        let sql = sql.to_string();
        self.with_session(timeout, move |conn| first_cell(conn, &sql))
            .map(|r| r.and_then(|c| c))
            .boxed()
    }

    fn driver(&self) -> Result<String, SourceError> {
        client_status()
    }

    fn pool(&self) -> PoolStatus {
        self.slots.status(self.pool.status())
    }

    fn slots(&self) -> Option<Arc<super::Slots>> {
        Some(self.slots.clone())
    }

    fn listener(&self) -> Option<Arc<dyn super::wake::Listener>> {
        Some(self.listener.clone())
    }

    fn server_info<'a>(
        &'a self,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ServerInfo, SourceError>> {
        async move {
            let version = self
                .with_session(timeout, |conn| {
                    conn.server_version()
                        .map(|(v, banner)| format!("{v} ({banner})"))
                })
                .await?;
            let t = std::time::Instant::now();
            self.with_session(timeout, |conn| {
                conn.query_row_as::<i64>("select 1 from dual", &[])
            })
            .await?;
            Ok(ServerInfo {
                version,
                round_trip: t.elapsed(),
            })
        }
        .boxed()
    }
}

impl managed::Manager for Sessions {
    type Type = Session;
    type Error = SourceError;

    async fn create(&self) -> Result<Session, SourceError> {
        // Waiting for a connect slot takes no thread, and ends when the poll gives up.
        let permit = self
            .connects
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SourceError::Connect("oracle source is closed".into()))?;
        let process_permit = process_connects()
            .acquire_owned()
            .await
            .map_err(|_| SourceError::Connect("oracle connects are closed".into()))?;
        let password = self.password.clone();
        let (user, connect_string) = (self.user.clone(), self.connect_string.clone());
        let connect = self.connect.clone();
        let made = tokio::task::spawn_blocking(move || {
            // Held until the connect really returns, even when the poll that asked has given
            // up: an abandoned connect still counts, and the next one waits for it.
            let _permits = (permit, process_permit);
            // A password file is read here too, never on a runtime worker.
            let password =
                String::from_utf8_lossy(&password.get()?.unwrap_or_default()).into_owned();
            Ok::<_, SourceError>(connect.connect(&Logon {
                user,
                password,
                connect_string,
            }))
        })
        .await
        .map_err(|e| SourceError::Connect(format!("oracle connect task failed: {e}")))??;
        match made {
            Ok(conn) => Ok(Session {
                conn: Arc::new(conn),
            }),
            Err(e) => Err(to_source_error(&e, Fault::classify_error(&e))),
        }
    }

    async fn recycle(&self, session: &mut Session, _: &Metrics) -> RecycleResult<SourceError> {
        // A local check of the socket's state, no round-trip.
        match session.conn.status() {
            Ok(ConnStatus::Normal) => Ok(()),
            _ => Err(RecycleError::message("oracle session not connected")),
        }
    }
}

/// Checks the described columns ([`super::one_column`]: one, or [`SourceError::ManyColumns`]),
/// fetches at most two rows (prefetch and array size 2: one round-trip, never more rows) and
/// converts the column of the only one; a second row is [`SourceError::ManyRows`].
fn first_cell(conn: &Connection, sql: &str) -> Result<Result<Cell, SourceError>, oracle::Error> {
    let mut stmt = conn
        .statement(sql)
        .fetch_array_size(2)
        .prefetch_rows(2)
        .build()?;
    let mut rows = stmt.query(&[])?;
    // One column, described by the execute before any row is fetched.
    if let Err(e) = super::one_column("oracle", rows.column_info().iter().map(|c| c.name())) {
        return Ok(Err(e));
    }
    let Some(row) = rows.next() else {
        return Ok(Ok(Cell::NoRows));
    };
    let cell = convert_first(&row?)?;
    if rows.next().transpose()?.is_some() {
        return Ok(Err(SourceError::ManyRows {
            first_row: "fetch first 1 row only",
        }));
    }
    Ok(cell)
}

/// The first column of a fetched row as a cell.
fn convert_first(row: &oracle::Row) -> Result<Result<Cell, SourceError>, oracle::Error> {
    let Some(column) = row.column_info().first() else {
        return Ok(Err(SourceError::Query(
            "oracle: the query returns no columns".into(),
        )));
    };
    let raw = match column_kind(column.oracle_type()) {
        ColumnKind::Decimal | ColumnKind::Text => match row.get::<_, Option<String>>(0)? {
            None => Raw::Null,
            Some(t) => Raw::Text(t),
        },
        ColumnKind::Binary => match row.get::<_, Option<f64>>(0)? {
            None => Raw::Null,
            Some(v) => Raw::Float(v),
        },
        ColumnKind::Other(name) => {
            return Ok(Err(SourceError::NotNumeric(format!(
                "a value of type {name}"
            ))));
        }
    };
    Ok(to_cell(raw))
}

/// How a first column is read.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnKind {
    /// NUMBER, FLOAT, INTEGER: read as decimal text, so the f64 is correctly rounded.
    Decimal,
    /// BINARY_DOUBLE, BINARY_FLOAT: read as f64.
    Binary,
    /// VARCHAR2, CHAR, NVARCHAR2, NCHAR, LONG, CLOB: numeric text only.
    Text,
    /// Anything else is not a metric.
    Other(String),
}

pub fn column_kind(ty: &OracleType) -> ColumnKind {
    match ty {
        OracleType::Number(..) | OracleType::Float(_) | OracleType::Int64 | OracleType::UInt64 => {
            ColumnKind::Decimal
        }
        OracleType::BinaryDouble | OracleType::BinaryFloat => ColumnKind::Binary,
        OracleType::Varchar2(_)
        | OracleType::NVarchar2(_)
        | OracleType::Char(_)
        | OracleType::NChar(_)
        | OracleType::Long
        | OracleType::CLOB
        | OracleType::NCLOB => ColumnKind::Text,
        other => ColumnKind::Other(other.to_string()),
    }
}

/// A first column's value as the driver gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Null,
    Text(String),
    Float(f64),
}

pub fn to_cell(raw: Raw) -> Result<Cell, SourceError> {
    match raw {
        Raw::Null => Ok(Cell::Null),
        Raw::Text(t) => parse_numeric_text(&t).map(Cell::Number),
        Raw::Float(v) if v.is_finite() => Ok(Cell::Number(v)),
        Raw::Float(v) => Err(SourceError::NotNumeric(format!("non-finite number {v}"))),
    }
}

/// What an Oracle error means for the scaler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// DPI-1047 and friends: Instant Client cannot be loaded.
    ClientMissing,
    /// The call timeout fired (DPI-1067, ORA-03156): discard the session.
    Timeout,
    /// The session or its connection is gone: discard it.
    SessionLost,
    /// Could not log on (listener, service, credentials, account).
    Connect,
    /// The query itself failed; the session is fine.
    Query,
}

/// `ORA-`/`DPI-` codes of sessions that are gone.
const SESSION_LOST: &[&str] = &[
    "ORA-00028", // your session has been killed
    "ORA-01012", // not logged on
    "ORA-02396", // exceeded maximum idle time
    "ORA-03113", // end-of-file on communication channel
    "ORA-03114", // not connected to ORACLE
    "ORA-03135", // connection lost contact
    "ORA-12537", // TNS: connection closed
    "ORA-12547", // TNS: lost contact
    "ORA-12570", // TNS: packet reader failure
    "ORA-12571", // TNS: packet writer failure
    "ORA-25408", // can not safely replay call
    "DPI-1010",  // not connected
    "DPI-1080",  // connection was closed by ORA-%d
];

/// Codes of failures to log on.
const CONNECT: &[&str] = &[
    "ORA-01017", // invalid username/password
    "ORA-28000", // account locked
    "ORA-28001", // password expired
    "ORA-01045", // lacks CREATE SESSION
    "ORA-12154", // could not resolve the connect identifier
    "ORA-12514", // listener does not know the service
    "ORA-12505", // listener does not know the SID
    "ORA-12541", // no listener
    "ORA-00018", // maximum number of sessions exceeded
    "ORA-00020", // maximum number of processes exceeded
    "ORA-02391", // exceeded simultaneous SESSIONS_PER_USER limit
    "ORA-12516", // listener could not find an available handler
    "ORA-12519", // no appropriate service handler found
    "ORA-12520", // no available handler for the requested server type
    "ORA-12543", // destination host unreachable
    "ORA-12170", // connect timeout
    "ORA-12545", // target host does not exist
    "DPI-1001",  // out of memory
];

impl Fault {
    /// Classifies an error by the `ORA-NNNNN` / `DPI-NNNN` code at the start of its message.
    pub fn classify(message: &str) -> Fault {
        let code: String = message.chars().take(9).collect();
        let code = code.trim_end_matches(':');
        if message.starts_with("DPI-1047")
            || message.starts_with("DPI-1072")
            || message.contains("libclntsh")
        {
            Fault::ClientMissing
        } else if code == "DPI-1067" || code == "ORA-03156" || code == "ORA-01013" {
            Fault::Timeout
        } else if SESSION_LOST.contains(&code) {
            Fault::SessionLost
        } else if CONNECT.contains(&code) {
            Fault::Connect
        } else {
            Fault::Query
        }
    }

    fn classify_error(e: &oracle::Error) -> Fault {
        match e.db_error() {
            Some(db) => Fault::classify(db.message()),
            None => Fault::Query,
        }
    }

    pub fn discards_session(self) -> bool {
        matches!(
            self,
            Fault::Timeout | Fault::SessionLost | Fault::ClientMissing
        )
    }
}

fn to_source_error(e: &oracle::Error, fault: Fault) -> SourceError {
    let message: String = match e.db_error() {
        // Oracle messages end with a newline and sometimes a "Help:" URL line.
        Some(db) => db
            .message()
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        None => e.to_string(),
    };
    message_error(&message, fault)
}

/// A driver message (its first line) as the error of its class.
fn message_error(message: &str, fault: Fault) -> SourceError {
    match fault {
        Fault::ClientMissing => SourceError::Connect(format!("{CLIENT_MISSING_HINT} ({message})")),
        Fault::Connect | Fault::SessionLost => SourceError::Connect(format!("oracle: {message}")),
        Fault::Timeout | Fault::Query => SourceError::Query(format!("oracle: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_kinds() {
        let cases = [
            (OracleType::Number(10, 0), ColumnKind::Decimal),
            (OracleType::Number(0, -127), ColumnKind::Decimal),
            (OracleType::Float(126), ColumnKind::Decimal),
            (OracleType::Int64, ColumnKind::Decimal),
            (OracleType::BinaryDouble, ColumnKind::Binary),
            (OracleType::BinaryFloat, ColumnKind::Binary),
            (OracleType::Varchar2(20), ColumnKind::Text),
            (OracleType::NVarchar2(20), ColumnKind::Text),
            (OracleType::Char(3), ColumnKind::Text),
            (OracleType::CLOB, ColumnKind::Text),
        ];
        for (ty, want) in cases {
            assert_eq!(column_kind(&ty), want, "{ty}");
        }
        assert!(matches!(column_kind(&OracleType::Date), ColumnKind::Other(n) if n == "DATE"));
        assert!(matches!(
            column_kind(&OracleType::BLOB),
            ColumnKind::Other(_)
        ));
        assert!(matches!(
            column_kind(&OracleType::Timestamp(6)),
            ColumnKind::Other(_)
        ));
    }

    #[test]
    fn conversions() {
        let ok = |raw: Raw| to_cell(raw).unwrap();
        assert_eq!(ok(Raw::Text("42".into())), Cell::Number(42.0));
        assert_eq!(ok(Raw::Text("-.5".into())), Cell::Number(-0.5));
        // NUMBER keeps its digits: 38-digit values round once, correctly.
        assert_eq!(
            ok(Raw::Text("12345678901234567890123456789012345678".into())),
            Cell::Number(1.2345678901234568e37)
        );
        assert_eq!(ok(Raw::Text("0.1".into())), Cell::Number(0.1));
        assert_eq!(ok(Raw::Text(" 17 ".into())), Cell::Number(17.0));
        assert_eq!(ok(Raw::Float(2.5)), Cell::Number(2.5));
        assert_eq!(ok(Raw::Null), Cell::Null);
        assert!(matches!(
            to_cell(Raw::Text("QUEUED".into())),
            Err(SourceError::NotNumeric(_))
        ));
        assert!(matches!(
            to_cell(Raw::Text("1,5".into())),
            Err(SourceError::NotNumeric(_))
        ));
        assert!(matches!(
            to_cell(Raw::Float(f64::INFINITY)),
            Err(SourceError::NotNumeric(_))
        ));
        assert!(matches!(
            to_cell(Raw::Float(f64::NAN)),
            Err(SourceError::NotNumeric(_))
        ));
    }

    /// The rule `first_cell` applies to `ResultSet::column_info()` right after the execute:
    /// Oracle describes `select * from app.jobs` as upper-case names.
    #[test]
    fn one_column_rule() {
        assert_eq!(super::super::one_column("oracle", ["COUNT(*)"]), Ok(()));
        let e = super::super::one_column("oracle", ["ID", "STATUS", "CREATED"]).unwrap_err();
        assert_eq!(
            e,
            SourceError::ManyColumns {
                columns: vec!["ID".into(), "STATUS".into(), "CREATED".into()],
                count: 3
            }
        );
        assert!(
            e.to_string()
                .starts_with(r#"the query returns 3 columns ("ID", "STATUS", "CREATED")"#),
            "{e}"
        );
        assert_eq!(
            super::super::one_column::<&str>("oracle", []),
            Err(SourceError::Query(
                "oracle: the query returns no columns".into()
            ))
        );
    }

    #[test]
    fn connect_timeout_in_the_connect_string() {
        let t = Duration::from_secs(10);
        let cases = [
            (
                "//db.example.com:1521/FREEPDB1",
                "//db.example.com:1521/FREEPDB1?connect_timeout=10&transport_connect_timeout=10",
            ),
            (
                "tcps://db:2484/orders?wallet_location=/w",
                "tcps://db:2484/orders?wallet_location=/w&connect_timeout=10&transport_connect_timeout=10",
            ),
            (
                "(DESCRIPTION=(ADDRESS=(PROTOCOL=TCP)(HOST=db)(PORT=1521))(CONNECT_DATA=(SERVICE_NAME=orders)))",
                "(DESCRIPTION=(CONNECT_TIMEOUT=10)(TRANSPORT_CONNECT_TIMEOUT=10)(ADDRESS=(PROTOCOL=TCP)(HOST=db)(PORT=1521))(CONNECT_DATA=(SERVICE_NAME=orders)))",
            ),
            (
                "( description = (ADDRESS=(HOST=db)))",
                "(DESCRIPTION=(CONNECT_TIMEOUT=10)(TRANSPORT_CONNECT_TIMEOUT=10) (ADDRESS=(HOST=db)))",
            ),
            // The operator's own timeout wins; an alias and a DESCRIPTION_LIST are left alone.
            (
                "//db:1521/svc?connect_timeout=3",
                "//db:1521/svc?connect_timeout=3",
            ),
            (
                "(DESCRIPTION=(TRANSPORT_CONNECT_TIMEOUT=1)(ADDRESS=(HOST=db)))",
                "(DESCRIPTION=(TRANSPORT_CONNECT_TIMEOUT=1)(ADDRESS=(HOST=db)))",
            ),
            ("ORDERS_HA", "ORDERS_HA"),
            (
                "(DESCRIPTION_LIST=(DESCRIPTION=(ADDRESS=(HOST=a))))",
                "(DESCRIPTION_LIST=(DESCRIPTION=(ADDRESS=(HOST=a))))",
            ),
            ("(déscription=x)", "(déscription=x)"),
        ];
        for (given, want) in cases {
            assert_eq!(with_connect_timeout(given, t), want, "{given}");
        }
        assert_eq!(
            with_connect_timeout("//db/svc", Duration::from_millis(200)),
            "//db/svc?connect_timeout=1&transport_connect_timeout=1",
            "whole seconds, at least one"
        );
    }

    #[test]
    fn error_classification() {
        let cases = [
            (
                "DPI-1047: Cannot locate a 64-bit Oracle Client library: \"libclntsh.so: cannot open shared object file\"",
                Fault::ClientMissing,
            ),
            (
                "DPI-1067: call timeout of 5000 ms exceeded with ORA-3156",
                Fault::Timeout,
            ),
            (
                "ORA-01013: user requested cancel of current operation",
                Fault::Timeout,
            ),
            (
                "ORA-03113: end-of-file on communication channel",
                Fault::SessionLost,
            ),
            ("ORA-03114: not connected to ORACLE", Fault::SessionLost),
            ("ORA-03135: connection lost contact", Fault::SessionLost),
            (
                "ORA-00028: your session has been killed",
                Fault::SessionLost,
            ),
            ("DPI-1010: not connected", Fault::SessionLost),
            (
                "DPI-1080: connection was closed by ORA-3113",
                Fault::SessionLost,
            ),
            (
                "ORA-01017: invalid username/password; logon denied",
                Fault::Connect,
            ),
            ("ORA-12541: TNS:no listener", Fault::Connect),
            // Session limits are failures to log on, so the pool waits for a session it holds.
            (
                "ORA-02391: exceeded simultaneous SESSIONS_PER_USER limit",
                Fault::Connect,
            ),
            (
                "ORA-00018: maximum number of sessions exceeded",
                Fault::Connect,
            ),
            (
                "ORA-12514: TNS:listener does not currently know of service requested",
                Fault::Connect,
            ),
            ("ORA-00942: table or view does not exist", Fault::Query),
            ("ORA-00904: \"X\": invalid identifier", Fault::Query),
            ("ORA-01722: invalid number", Fault::Query),
            ("ORA-01476: divisor is equal to zero", Fault::Query),
        ];
        for (msg, want) in cases {
            assert_eq!(Fault::classify(msg), want, "{msg}");
        }
        for f in [Fault::Timeout, Fault::SessionLost, Fault::ClientMissing] {
            assert!(f.discards_session(), "{f:?}");
        }
        for f in [Fault::Query, Fault::Connect] {
            assert!(!f.discards_session(), "{f:?}");
        }
    }

    /// This machine has no Instant Client: the real driver must say so with the hint.
    #[test]
    fn missing_client_is_reported_with_the_hint() {
        match client_status() {
            Ok(version) => eprintln!("Oracle client present here: {version}"),
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains(CLIENT_MISSING_HINT), "{m}");
                assert!(m.contains("DPI-1047"), "{m}");
            }
        }
    }
}
