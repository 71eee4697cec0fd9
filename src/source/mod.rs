//! The one small trait every database sits behind, and how a connection's config becomes one.
//!
//! A [`Source`] runs one query with a timeout that it enforces on the database side, and returns
//! the value of its one row and one column as a [`Cell`]. A query must produce exactly one column
//! and one row (or none): every source checks the columns the database describes before reading
//! any row ([`one_column`], [`SourceError::ManyColumns`]), fetches at most two rows and answers
//! [`SourceError::ManyRows`] for a second one, because scaling on "the first cell of many" is
//! scaling on an id or on noise. What a NULL or an empty result means is the engine's decision
//! (`ignoreNullValues`), not the source's.
//!
//! Pooled sources take their sessions through [`checkout`]: a poll takes one of the pool's
//! [`Slots`] first, so a server that refuses more sessions makes polls wait for the ones the
//! pool holds instead of failing them, and a poll that spent its budget waiting is reported as
//! a pool wait ([`SourceError::PoolTimeout`], metric label `pool_timeout`), not a slow query.

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
    /// Most of the budget went to waiting for a session: the pool is the bottleneck, not the
    /// query, and the message leads with that (an operator reading "query timed out" indexes
    /// the query).
    #[error("waited {} of the {} query timeout for a free database session (pool of {size}) and the query ran out of the rest: {POOL_ADVICE}", humantime::format_duration(*waited), humantime::format_duration(*timeout))]
    TimeoutAfterWait {
        timeout: Duration,
        waited: Duration,
        size: usize,
    },
    #[error("no free database session within {} (all {size} of the pool busy): {POOL_ADVICE}", humantime::format_duration(*waited))]
    PoolTimeout { waited: Duration, size: usize },
    /// An interval poll's namespace held its whole share of the pool (`engine::shares`).
    #[error(
        "no free database session within {}: the interval polls of this poller's namespace hold its whole share of this connection's pool ({share} sessions, --namespace-pool-share {percent}%; a poller shared by identical triggers counts under the namespace that created it), so that namespace's queries are slow or too many of them poll at once. Shorten the queries (or queryTimeout), lengthen pollInterval, or raise pool_size",
        humantime::format_duration(*waited)
    )]
    NamespaceShare {
        waited: Duration,
        share: usize,
        percent: u8,
    },
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
    /// More than one column, found before any row is read: with `select *` the first column is
    /// usually an id. Keeps at most [`SHOWN_COLUMNS`] names, each cut to [`COLUMN_NAME_MAX`]
    /// characters, and the total.
    #[error(
        "the query returns {count} columns ({}); orascale scales on one number: return one column, e.g. `select count(*) from …` or an aggregate",
        list_columns(columns, *count)
    )]
    ManyColumns {
        /// The first names, quoted and cut when shown.
        columns: Vec<String>,
        /// How many columns there are.
        count: usize,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// What to do about polls that wait for a session, in their messages (docs/operations.md).
pub const POOL_ADVICE: &str = "raise the connection's pool_size, or lower wake-up fan-out (fewer triggers per notifyChannel, a longer minWakeInterval)";

/// Column names kept in a [`SourceError::ManyColumns`]; the rest are counted.
pub const SHOWN_COLUMNS: usize = 8;
/// Characters of each column name kept in a [`SourceError::ManyColumns`].
pub const COLUMN_NAME_MAX: usize = 40;

/// `"id", "status", … and 3 more`: bounded whatever the query.
fn list_columns(columns: &[String], count: usize) -> String {
    let mut out = columns
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if count > columns.len() {
        out.push_str(&format!(" … and {} more", count - columns.len()));
    }
    out
}

/// The one-column rule, over the column names the database describes for a statement (before
/// its rows are read): one column passes; none is an error of its own; more is
/// [`SourceError::ManyColumns`] naming them. `kind` prefixes the no-columns message.
pub fn one_column<S: AsRef<str>>(
    kind: &str,
    names: impl IntoIterator<Item = S>,
) -> Result<(), SourceError> {
    let mut kept = Vec::new();
    let mut count = 0;
    for name in names {
        if kept.len() < SHOWN_COLUMNS {
            let name = name.as_ref();
            kept.push(if name.chars().count() > COLUMN_NAME_MAX {
                format!(
                    "{}…",
                    name.chars().take(COLUMN_NAME_MAX).collect::<String>()
                )
            } else {
                name.to_string()
            });
        }
        count += 1;
    }
    match count {
        0 => Err(SourceError::Query(format!(
            "{kind}: the query returns no columns"
        ))),
        1 => Ok(()),
        _ => Err(SourceError::ManyColumns {
            columns: kept,
            count,
        }),
    }
}

impl SourceError {
    /// How a query that ran out of its `timeout` after waiting `waited` for its session (in a
    /// pool of `size`) is reported. The rule: it is a pool wait
    /// ([`SourceError::TimeoutAfterWait`], `pool_timeout`) only when the wait took more than
    /// half of the budget, i.e. the query was left less time to run than the poll spent
    /// waiting; otherwise the query itself was too slow for the time it had
    /// ([`SourceError::Timeout`], `timeout`), and indexing it is the right advice.
    pub fn timed_out(timeout: Duration, waited: Duration, size: usize) -> SourceError {
        if waited > timeout / 2 {
            SourceError::TimeoutAfterWait {
                timeout,
                waited: Duration::from_millis(waited.as_millis() as u64),
                size,
            }
        } else {
            SourceError::Timeout(timeout)
        }
    }

    /// A short, bounded label for metrics: `timeout` (the query or the connect was too slow),
    /// `pool_timeout` (the poll spent its budget, or most of it, waiting for a pooled session:
    /// a sizing problem, not a slow query) or `error`.
    pub fn result_label(&self) -> &'static str {
        match self {
            SourceError::Timeout(_) => "timeout",
            SourceError::TimeoutAfterWait { .. }
            | SourceError::PoolTimeout { .. }
            | SourceError::NamespaceShare { .. } => "pool_timeout",
            _ => "error",
        }
    }

    /// Whether the server refused a new session because it has no slot for it: PostgreSQL
    /// SQLSTATE 53300 (too many connections for the role or the database, or the remaining
    /// slots are reserved), Oracle ORA-00018 (sessions), ORA-00020 (processes), ORA-02391
    /// (the user's SESSIONS_PER_USER), ORA-12516/12519/12520 (the listener has no handler).
    pub fn is_session_limit(&self) -> bool {
        const CODES: [&str; 7] = [
            " 53300:",
            "ORA-00018",
            "ORA-00020",
            "ORA-02391",
            "ORA-12516",
            "ORA-12519",
            "ORA-12520",
        ];
        match self {
            SourceError::Connect(m) => CODES.iter().any(|c| m.contains(c)),
            _ => false,
        }
    }

    /// Whether the database refused the credentials (PostgreSQL SQLSTATE 28P01/28000; Oracle
    /// ORA-01017 wrong credentials, ORA-28000 account locked, ORA-01005 null password): the
    /// poller then backs off, so a wrong password is not retried every poll interval (a
    /// guessing channel, and on Oracle a way to lock the account).
    pub fn is_auth_failure(&self) -> bool {
        const CODES: [&str; 5] = [" 28P01:", " 28000:", "ORA-01017", "ORA-28000", "ORA-01005"];
        match self {
            SourceError::Connect(m) => CODES.iter().any(|c| m.contains(c)),
            _ => false,
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

    /// The gate in front of the source's pool, if it has one: the wake budget is a share of
    /// the sessions it lets polls have now (`engine::wake::Budget`).
    fn slots(&self) -> Option<Arc<Slots>> {
        None
    }

    /// The database's notification listener, for database-driven wake-ups (`notifyChannel`),
    /// if it has one. The engine owns the listening session it opens (one per connection).
    fn listener(&self) -> Option<Arc<dyn wake::Listener>> {
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

/// How long a pool that the server refused a session stays at the sessions it holds before it
/// asks the server for one more (one slot per period, so a freed slot is found again).
pub const REGROW_AFTER: Duration = Duration::from_secs(30);

/// How long a poll refused its first session waits for a session outside the pool (the
/// wake-up listener's) to give its slot up before it tries once more.
const YIELD_PAUSE: Duration = Duration::from_millis(200);

/// The sessions a pool may ask for now: its `pool_size`, less the sessions the server refused
/// it (PostgreSQL 53300, Oracle ORA-00018/00020/02391). A poll takes a slot before it takes a
/// session, so when the server will not open another session the poll waits for one of the
/// sessions the pool already holds (within its deadline) instead of failing. Every
/// [`REGROW_AFTER`] one refused slot is given back, so a limit that was raised (or a session
/// another client closed) is used again.
#[derive(Debug)]
pub struct Slots {
    gate: Arc<tokio::sync::Semaphore>,
    max: usize,
    state: std::sync::Mutex<SlotState>,
    /// Counts refusals while the pool held no session: a session outside the pool (the
    /// wake-up listener's) has the slot polls need, and gives it up on a change.
    starved: tokio::sync::watch::Sender<u64>,
    /// Polls waiting at the gate for a slot: with the gate in front of the pool, these (not
    /// the pool's own waiters) are the polls waiting for a session.
    waiting: std::sync::atomic::AtomicUsize,
}

#[derive(Debug)]
struct SlotState {
    /// Slots in circulation: `max` less the refused ones.
    capacity: usize,
    /// When the last slot was refused (or given back).
    changed: tokio::time::Instant,
    /// When [`Slots::make_room`] last gave a session up, if ever.
    made_room: Option<tokio::time::Instant>,
}

/// A poll's slot: held with its session, released when the poll is done with it.
pub type Slot = tokio::sync::OwnedSemaphorePermit;

impl Slots {
    pub fn new(max: usize) -> Slots {
        let max = max.max(1);
        Slots {
            gate: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            state: std::sync::Mutex::new(SlotState {
                capacity: max,
                changed: tokio::time::Instant::now(),
                made_room: None,
            }),
            starved: tokio::sync::watch::channel(0).0,
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The pool gauges of `pool` behind this gate. Its waiters are the polls waiting here for
    /// a slot, so `orascale_pool_waiting` (and the OrascalePoolSaturated alert) sees a
    /// saturated pool. The pool's own count is not added: a slot holder never waits inside
    /// the pool (there are never more slots than sessions), and deadpool counts a caller
    /// that is connecting a new session as waiting, which it is not.
    pub fn status(&self, pool: deadpool::Status) -> PoolStatus {
        PoolStatus {
            waiting: self.waiting.load(std::sync::atomic::Ordering::Relaxed),
            ..PoolStatus::from(pool)
        }
    }

    /// Waits for a slot until `until`, counted in [`Slots::status`] meanwhile.
    async fn acquire(
        &self,
        until: tokio::time::Instant,
    ) -> Result<Result<Slot, tokio::sync::AcquireError>, tokio::time::error::Elapsed> {
        // Fast path: a free slot is not a wait.
        if let Ok(slot) = self.gate.clone().try_acquire_owned() {
            return Ok(Ok(slot));
        }
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        tokio::time::timeout_at(until, self.gate.clone().acquire_owned()).await
    }

    /// Changes whenever the server refused the pool a session while it held none: a session
    /// outside the pool watching this gives its slot up (polls come first).
    pub fn starved(&self) -> tokio::sync::watch::Receiver<u64> {
        self.starved.subscribe()
    }

    /// Slots in circulation now (`pool_size` unless the server refused sessions).
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Retires `n` slots as refused sessions do (never below one), for tests of what follows
    /// the gate's capacity.
    #[cfg(test)]
    pub(crate) fn retire_for_test(&self, n: usize) {
        for _ in 0..n {
            let slot = self.gate.clone().try_acquire_owned().expect("a free slot");
            let held = self.capacity() - 1;
            assert!(self.refused(slot, held.max(1)));
        }
    }

    /// Gives one refused slot back once [`REGROW_AFTER`] has passed since the last change.
    fn regrow(&self) {
        let mut state = self.lock();
        if state.capacity < self.max && state.changed.elapsed() >= REGROW_AFTER {
            state.capacity += 1;
            state.changed = tokio::time::Instant::now();
            self.gate.add_permits(1);
        }
    }

    /// The server refused a session outside the pool (the listener's) while the pool holds
    /// `held` ≥ 2: retire slots down to `held − 1` (at least one, those free now) and, holding
    /// them, close one idle session with `close_idle`, so the next session the server grants is
    /// the outside one's. False when no slot is free or no session idle (nothing changed), or
    /// when refusals meanwhile retired slots down to the last one (a session was closed, no
    /// slot retired).
    ///
    /// Only when the pool holds every session its gate allows (so it plausibly took the limit
    /// itself, rather than other clients of the database), and at most once per
    /// [`MAKE_ROOM_EVERY`]: a listener refused because the database is full of
    /// others must not whittle the pool down retry after retry (polls come first).
    pub(crate) fn make_room(&self, held: usize, close_idle: impl FnOnce() -> bool) -> bool {
        if held < 2 || held < self.capacity() {
            return false;
        }
        if self
            .lock()
            .made_room
            .is_some_and(|t| t.elapsed() < MAKE_ROOM_EVERY)
        {
            return false;
        }
        let excess = self.capacity().saturating_sub(held - 1).max(1);
        let taken: Vec<Slot> = (0..excess)
            .map_while(|_| self.gate.clone().try_acquire_owned().ok())
            .collect();
        // Never below one slot in circulation.
        if taken.is_empty() || self.capacity() <= taken.len() || !close_idle() {
            return false;
        }
        let mut state = self.lock();
        // Re-checked under the lock: a refusal may have retired slots since the check above
        // (while the session was closed, say). A slot not retired goes back to the gate.
        let mut retired = false;
        for slot in taken {
            if state.capacity > 1 {
                slot.forget();
                state.capacity -= 1;
                retired = true;
            }
        }
        // The session is closed either way: the hold-off counts from now.
        state.changed = tokio::time::Instant::now();
        state.made_room = Some(state.changed);
        retired
    }

    /// The server refused a new session while the pool holds `held`: retire `slot` so the
    /// polls wait for the held sessions. False (the refusal is the poll's error) when the
    /// pool holds none to wait for.
    fn refused(&self, slot: Slot, held: usize) -> bool {
        if held == 0 {
            self.starved.send_modify(|n| *n = n.wrapping_add(1));
            return false;
        }
        let mut state = self.lock();
        if state.capacity <= held {
            return false;
        }
        slot.forget();
        state.capacity -= 1;
        state.changed = tokio::time::Instant::now();
        true
    }
}

/// A session taken from a pool: its slot (held until the caller is done with the session) and
/// how long the poll waited for that slot — the time other polls' sessions cost it; connecting
/// a new session is not counted, so a slow connect is never reported as a pool wait.
pub struct Checked<M: deadpool::managed::Manager> {
    pub session: deadpool::managed::Object<M>,
    pub slot: Slot,
    pub waited: Duration,
}

/// How often at most [`Slots::make_room`] gives a session up to a refused listener: twice the
/// regrow period, so the slot it retires can come back before it may act again.
const MAKE_ROOM_EVERY: Duration = Duration::from_secs(60);

/// The least time a poll must have left, once it holds a slot, to start on a session (or a
/// tenth of its budget, for very short budgets): below it, the poll reports the pool wait it
/// was instead of running a query that would be cut at once.
const MIN_LEFT_TO_START: Duration = Duration::from_millis(50);

/// Takes a slot, then a session from `pool`, waiting until `deadline` or, when the connection
/// sets one, its `pool_timeout` after `started`, whichever comes first. Waiting never outlasts
/// the query's budget, and a full pool is reported as such ([`SourceError::PoolTimeout`]).
/// When the server refuses the pool another session ([`SourceError::is_session_limit`]) while
/// the pool holds some, the poll waits for one of those instead of failing ([`Slots`]). The
/// [`Slot`] is the caller's to hold until it is done with the session.
pub async fn checkout<M>(
    pool: &deadpool::managed::Pool<M>,
    slots: &Slots,
    started: tokio::time::Instant,
    deadline: tokio::time::Instant,
    pool_timeout: Option<Duration>,
    kind: &str,
) -> Result<Checked<M>, SourceError>
where
    M: deadpool::managed::Manager<Error = SourceError>,
{
    let wait_until = pool_timeout.map_or(deadline, |t| deadline.min(deadline_after(started, t)));
    let waited = || Duration::from_millis((wait_until - started).as_millis() as u64);
    // A refusal while the pool holds nothing asks a session outside it to give its slot up;
    // the poll tries once more after this pause.
    let mut yielded = false;
    // Time spent waiting for a slot (other polls' sessions), not connecting one.
    let mut slot_waited = Duration::ZERO;
    loop {
        slots.regrow();
        let asked = tokio::time::Instant::now();
        let slot = match slots.acquire(wait_until).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(SourceError::Connect(format!("{kind} pool: closed"))),
            Err(_) => {
                // Every slot was held by another poll (querying, or connecting a session
                // to replace one discarded after a timeout): a pool wait, not a slow query.
                // A poll that holds a slot and times out connecting is a `Timeout` below.
                return Err(SourceError::PoolTimeout {
                    waited: waited(),
                    size: slots.capacity(),
                });
            }
        };
        slot_waited += asked.elapsed();
        // A slot taken with (almost) nothing left of the budget: the poll spent it waiting.
        // Give the slot back without touching a session — a query started now would be cut at
        // once and its healthy session thrown away (PostgreSQL cancel, Oracle break).
        // Measured against the query's deadline: a shorter `pool_timeout` ends the wait, not
        // the time the query may run.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left < MIN_LEFT_TO_START.min(deadline.saturating_duration_since(started) / 10) {
            drop(slot);
            return Err(SourceError::PoolTimeout {
                waited: waited(),
                size: slots.capacity(),
            });
        }
        match tokio::time::timeout_at(wait_until, pool.get()).await {
            Ok(Ok(session)) => {
                return Ok(Checked {
                    session,
                    slot,
                    waited: slot_waited,
                });
            }
            Ok(Err(deadpool::managed::PoolError::Backend(e))) if e.is_session_limit() => {
                let held = pool.status().size;
                if !slots.refused(slot, held) {
                    if held > 0 || yielded {
                        return Err(e);
                    }
                    yielded = true;
                    let pause = deadline_after(tokio::time::Instant::now(), YIELD_PAUSE);
                    if pause >= wait_until {
                        // Less than the pause is left: the poll spent its budget waiting for
                        // a session the server would not give, a pool wait like a longer one
                        // (never "query timed out", which sends operators to the query).
                        tokio::time::sleep_until(wait_until).await;
                        return Err(SourceError::PoolTimeout {
                            waited: waited(),
                            size: slots.capacity(),
                        });
                    }
                    tokio::time::sleep_until(pause).await;
                    continue;
                }
                tracing::info!(kind, sessions = held, error = %e,
                    "the database refused another session: polls wait for the sessions the pool holds");
            }
            Ok(Err(deadpool::managed::PoolError::Backend(e))) => return Err(e),
            Ok(Err(e)) => return Err(SourceError::Connect(format!("{kind} pool: {e}"))),
            Err(_) => {
                let status = pool.status();
                // A poll refused a session earlier spent its budget waiting for one too, and so
                // did one that waited most of it for a slot and then had to connect (the
                // `timed_out` rule: more than half of the budget spent waiting).
                let budget = wait_until - started;
                return Err(
                    if status.size >= status.max_size || yielded || slot_waited > budget / 2 {
                        SourceError::PoolTimeout {
                            waited: waited(),
                            size: status.max_size,
                        }
                    } else {
                        SourceError::Timeout(waited())
                    },
                );
            }
        }
    }
}

/// Takes one idle session out of `pool` for the caller to close (how depends on the
/// database); `None` when every session is in use.
pub(crate) fn take_one_idle<M: deadpool::managed::Manager>(
    pool: &deadpool::managed::Pool<M>,
) -> Option<M::Type> {
    let mut left: usize = 1;
    pool.retain(|_, _| {
        let keep = left == 0;
        left = left.saturating_sub(1);
        keep
    })
    .removed
    .pop()
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

    /// A deadpool pool of `size` over a scripted manager.
    fn scripted_pool<M: deadpool::managed::Manager>(
        manager: M,
        size: usize,
    ) -> deadpool::managed::Pool<M> {
        deadpool::managed::Pool::builder(manager)
            .max_size(size)
            .build()
            .unwrap()
    }

    #[test]
    fn one_column_rule() {
        assert_eq!(one_column("sqlite", ["count(*)"]), Ok(()));
        assert_eq!(
            one_column("oracle", Vec::<String>::new()),
            Err(SourceError::Query(
                "oracle: the query returns no columns".into()
            ))
        );
        let e = one_column("postgres", ["id", "status"]).unwrap_err();
        assert_eq!(
            e,
            SourceError::ManyColumns {
                columns: vec!["id".into(), "status".into()],
                count: 2
            }
        );
        assert_eq!(
            e.to_string(),
            "the query returns 2 columns (\"id\", \"status\"); orascale scales on one number: \
             return one column, e.g. `select count(*) from …` or an aggregate"
        );
        // Bounded in count and bytes, whatever the query: names are quoted (a quote or a
        // newline in a name cannot break the message) and cut.
        let long = "x".repeat(10_000);
        let mut names: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
        names[0] = long;
        names[1] = "we\"ird\nname".into();
        let e = one_column("sqlite", &names).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("the query returns 1000 columns ("),
            "{text}"
        );
        assert!(
            text.contains(&format!("\"{}…\"", "x".repeat(COLUMN_NAME_MAX))),
            "{text}"
        );
        assert!(text.contains(r#""we\"ird\nname""#), "{text}");
        assert!(text.contains("\"c7\" … and 992 more)"), "{text}");
        assert!(!text.contains("\"c8\""), "{text}");
        assert!(text.len() < 600, "{} bytes", text.len());
    }

    #[test]
    fn pool_waits_are_not_slow_queries() {
        let wait = SourceError::PoolTimeout {
            waited: Duration::from_secs(5),
            size: 4,
        };
        let after = SourceError::TimeoutAfterWait {
            timeout: Duration::from_secs(5),
            waited: Duration::from_secs(4),
            size: 4,
        };
        for e in [&wait, &after] {
            assert_eq!(e.result_label(), "pool_timeout", "{e}");
            let text = e.to_string();
            assert!(!text.starts_with("query timed out"), "{text}");
            assert!(text.contains("free database session"), "{text}");
            assert!(text.contains("pool_size"), "{text}");
            assert!(text.contains("wake-up fan-out"), "{text}");
        }
        assert_eq!(
            after.to_string(),
            format!(
                "waited 4s of the 5s query timeout for a free database session (pool of 4) and the query ran out of the rest: {POOL_ADVICE}"
            )
        );
        let slow = SourceError::Timeout(Duration::from_secs(5));
        assert_eq!(slow.result_label(), "timeout");
        assert_eq!(slow.to_string(), "query timed out after 5s");
    }

    #[test]
    fn a_slow_query_after_a_short_wait_is_a_timeout() {
        let budget = Duration::from_secs(4);
        let ms = Duration::from_millis;
        for (waited, label) in [
            (Duration::ZERO, "timeout"),
            // A quarter, a third: the query had most of its budget and still ran out of it.
            (ms(1000), "timeout"),
            (ms(1333), "timeout"),
            // Exactly half: the query had as long as the wait.
            (ms(2000), "timeout"),
            // More than half: the query had less time than the poll spent waiting.
            (ms(2001), "pool_timeout"),
            (ms(3900), "pool_timeout"),
        ] {
            let e = SourceError::timed_out(budget, waited, 4);
            assert_eq!(e.result_label(), label, "waited {waited:?}: {e}");
        }
        assert_eq!(
            SourceError::timed_out(budget, ms(1000), 4),
            SourceError::Timeout(budget)
        );
        assert_eq!(
            SourceError::timed_out(budget, Duration::from_micros(3_000_700), 4),
            SourceError::TimeoutAfterWait {
                timeout: budget,
                waited: ms(3000),
                size: 4
            }
        );
    }

    /// A pool of numbers that take the given time to make, for checkout tests without a
    /// database.
    struct Numbers(Duration);

    impl deadpool::managed::Manager for Numbers {
        type Type = u32;
        type Error = SourceError;
        async fn create(&self) -> Result<u32, SourceError> {
            tokio::time::sleep(self.0).await;
            Ok(7)
        }
        async fn recycle(
            &self,
            _: &mut u32,
            _: &deadpool::managed::Metrics,
        ) -> deadpool::managed::RecycleResult<SourceError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_listener_makes_the_pool_give_up_a_slot_and_a_session() {
        // The pool holds 2 of the 4 sessions its gate allows: the database is full of other
        // clients, not of this pool — nothing is given up (polls come first).
        let slots = Slots::new(4);
        assert!(!slots.make_room(2, || true));
        assert_eq!(slots.capacity(), 4);
        // A pool that holds every session its gate allows (refusals shrank it to 2).
        let slots = Slots::new(2);
        // One session in the pool: nothing to give up.
        assert!(!slots.make_room(1, || true));
        // Every session busy: nothing closed, nothing retired.
        assert!(!slots.make_room(2, || false));
        assert_eq!(slots.capacity(), 2);
        // Two held: one closed, and the slots retired down to one, so the pool cannot grow
        // back into the freed slot before the listener takes it.
        let mut closed = 0;
        assert!(slots.make_room(2, || {
            closed += 1;
            true
        }));
        assert_eq!((closed, slots.capacity()), (1, 1));
        // A slot in use cannot be retired now; the one left is never retired.
        let held = slots.gate.clone().try_acquire_owned().unwrap();
        assert!(!slots.make_room(2, || true));
        drop(held);
        assert!(!slots.make_room(2, || true));
        assert_eq!(slots.capacity(), 1);
        // At most once per regrow period: a listener refused again and again does not
        // whittle the pool down retry after retry.
        tokio::time::advance(REGROW_AFTER).await;
        slots.regrow();
        assert_eq!(slots.capacity(), 2);
        assert!(!slots.make_room(2, || true), "too soon after the last time");
        tokio::time::advance(MAKE_ROOM_EVERY - REGROW_AFTER).await;
        assert!(slots.make_room(2, || true));
        assert_eq!(slots.capacity(), 1);
    }

    /// Refusals that retire slots while make_room closes its session (between its check and
    /// its lock) never take the gate below one slot.
    #[tokio::test(start_paused = true)]
    async fn make_room_and_concurrent_refusals_leave_one_slot() {
        let slots = Slots::new(3);
        let retired = slots.make_room(3, || {
            for held in [2, 1] {
                let slot = slots.gate.clone().try_acquire_owned().unwrap();
                assert!(slots.refused(slot, held));
            }
            true
        });
        assert!(!retired, "the refusals left one slot: none was retired");
        assert_eq!(slots.capacity(), 1);
        assert_eq!(slots.gate.available_permits(), 1, "one slot in circulation");
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_that_waited_for_a_slot_is_a_pool_wait_whatever_the_holder_does() {
        let pool = scripted_pool(Numbers(Duration::ZERO), 1);
        let slots = Slots::new(1);
        // The one slot is held by a poll that has no session yet (it is connecting, say
        // after its session was discarded): the pool holds none, and still the wait is a
        // pool wait, not "query timed out".
        let held = slots.gate.clone().try_acquire_owned().unwrap();
        let started = tokio::time::Instant::now();
        let deadline = deadline_after(started, Duration::from_millis(300));
        let e = checkout(&pool, &slots, started, deadline, None, "test")
            .await
            .err()
            .unwrap();
        assert_eq!(
            e,
            SourceError::PoolTimeout {
                waited: Duration::from_millis(300),
                size: 1
            }
        );
        drop(held);
        let Checked { session: n, .. } = checkout(
            &pool,
            &slots,
            started,
            deadline_after(started, Duration::from_secs(1)),
            None,
            "test",
        )
        .await
        .unwrap();
        assert_eq!(*n, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_that_waited_for_a_slot_then_had_to_connect_is_a_pool_wait() {
        // The pool is below its size (a session was discarded after a timeout), so the poll
        // that gets the slot must connect: when the slot came after most of the budget, the
        // connect running past the deadline does not make the wait a slow query.
        let pool = scripted_pool(Numbers(Duration::from_millis(500)), 1);
        let slots = Slots::new(1);
        let held = slots.gate.clone().try_acquire_owned().unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            drop(held);
        });
        let started = tokio::time::Instant::now();
        let deadline = deadline_after(started, Duration::from_secs(1));
        let e = checkout(&pool, &slots, started, deadline, None, "test")
            .await
            .err()
            .unwrap();
        assert_eq!(e.result_label(), "pool_timeout", "{e}");
        // A slot that comes with almost nothing left is given back untouched: no session is
        // made (or, with one in the pool, cut at once and thrown away).
        let pool = scripted_pool(Numbers(Duration::ZERO), 1);
        let held = slots.gate.clone().try_acquire_owned().unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(980)).await;
            drop(held);
        });
        let started = tokio::time::Instant::now();
        let deadline = deadline_after(started, Duration::from_secs(1));
        let e = checkout(&pool, &slots, started, deadline, None, "test")
            .await
            .err()
            .unwrap();
        assert_eq!(
            e,
            SourceError::PoolTimeout {
                waited: Duration::from_secs(1),
                size: 1
            }
        );
        assert_eq!(started.elapsed(), Duration::from_millis(980), "at once");
        assert_eq!(pool.status().size, 0, "no session made for it");
    }

    #[tokio::test(start_paused = true)]
    async fn polls_waiting_at_the_gate_are_counted_as_waiting() {
        let pool = scripted_pool(Numbers(Duration::ZERO), 1);
        let slots = Arc::new(Slots::new(1));
        let held = slots.gate.clone().try_acquire_owned().unwrap();
        let waiter = {
            let (pool, slots) = (pool.clone(), slots.clone());
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let deadline = deadline_after(started, Duration::from_secs(5));
                checkout(&pool, &slots, started, deadline, None, "test")
                    .await
                    .map(|c| *c.session)
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The pool itself has no waiter (the gate is in front of it): the gate's is counted.
        assert_eq!(pool.status().waiting, 0);
        assert_eq!(slots.status(pool.status()).waiting, 1);
        // A poll connecting a session is not waiting for one, though deadpool counts it.
        let connecting = scripted_pool(Numbers(Duration::from_secs(1)), 1);
        let free = Arc::new(Slots::new(1));
        let connect = {
            let (connecting, free) = (connecting.clone(), free.clone());
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let deadline = deadline_after(started, Duration::from_secs(5));
                checkout(&connecting, &free, started, deadline, None, "test")
                    .await
                    .map(|c| *c.session)
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(connecting.status().waiting, 1, "deadpool's count");
        assert_eq!(free.status(connecting.status()).waiting, 0);
        assert_eq!(connect.await.unwrap(), Ok(7));
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(7));
        assert_eq!(slots.status(pool.status()).waiting, 0);
        // A poll that gave up waiting is no longer counted either.
        let _held = slots.gate.clone().try_acquire_owned().unwrap();
        let started = tokio::time::Instant::now();
        let e = checkout(
            &pool,
            &slots,
            started,
            deadline_after(started, Duration::from_millis(50)),
            None,
            "test",
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.result_label(), "pool_timeout");
        assert_eq!(slots.status(pool.status()).waiting, 0);
    }

    /// A server that refuses every session (SQLSTATE 53300) after `0` of connecting.
    struct Refusing(Duration);

    impl deadpool::managed::Manager for Refusing {
        type Type = u32;
        type Error = SourceError;
        async fn create(&self) -> Result<u32, SourceError> {
            tokio::time::sleep(self.0).await;
            Err(SourceError::Connect(
                "postgres: FATAL 53300: too many connections for role \"limited\"".into(),
            ))
        }
        async fn recycle(
            &self,
            _: &mut u32,
            _: &deadpool::managed::Metrics,
        ) -> deadpool::managed::RecycleResult<SourceError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_poll_with_little_budget_left_is_a_pool_wait() {
        let pool = scripted_pool(Refusing(Duration::from_millis(10)), 4);
        let slots = Slots::new(4);
        // Refused while the pool holds nothing, with less than the 200 ms pause left: it
        // waited its budget for a session (the listener's slot), a pool wait.
        let started = tokio::time::Instant::now();
        let deadline = deadline_after(started, Duration::from_millis(150));
        let e = checkout(&pool, &slots, started, deadline, None, "test")
            .await
            .err()
            .unwrap();
        assert_eq!(
            e,
            SourceError::PoolTimeout {
                waited: Duration::from_millis(150),
                size: 4
            }
        );
        assert_eq!(e.result_label(), "pool_timeout");
        assert!(e.to_string().contains(POOL_ADVICE), "{e}");
        assert_eq!(started.elapsed(), Duration::from_millis(150), "no longer");
        // With time for the retry, a second refusal is the poll's error, as it says.
        let started = tokio::time::Instant::now();
        let deadline = deadline_after(started, Duration::from_secs(1));
        let e = checkout(&pool, &slots, started, deadline, None, "test")
            .await
            .err()
            .unwrap();
        assert!(e.is_session_limit(), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn connecting_a_session_is_not_waiting_for_one() {
        // A 200 ms connect with a free slot: no pool wait (a slow server is not a small pool).
        let pool = scripted_pool(Numbers(Duration::from_millis(200)), 1);
        let slots = Slots::new(1);
        let started = tokio::time::Instant::now();
        let deadline = deadline_after(started, Duration::from_secs(1));
        let first = checkout(&pool, &slots, started, deadline, None, "test")
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        assert_eq!(first.waited, Duration::ZERO);
        // Waiting 300 ms for the held session is a wait.
        let second = {
            let started = tokio::time::Instant::now();
            let deadline = deadline_after(started, Duration::from_secs(1));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(first);
            });
            checkout(&pool, &slots, started, deadline, None, "test")
                .await
                .unwrap()
        };
        assert_eq!(second.waited, Duration::from_millis(300));
    }

    #[test]
    fn session_limits() {
        for (m, limit) in [
            (
                "postgres: FATAL 53300: too many connections for role \"limited\"",
                true,
            ),
            (
                "postgres: FATAL 53300: remaining connection slots are reserved",
                true,
            ),
            (
                "oracle: ORA-00018: maximum number of sessions exceeded",
                true,
            ),
            (
                "oracle: ORA-02391: exceeded simultaneous SESSIONS_PER_USER limit",
                true,
            ),
            (
                "postgres: FATAL 28P01: password authentication failed",
                false,
            ),
            (
                "postgres: error connecting to server: Connection refused",
                false,
            ),
        ] {
            assert_eq!(
                SourceError::Connect(m.into()).is_session_limit(),
                limit,
                "{m}"
            );
        }
        assert!(!SourceError::Query(" 53300: x".into()).is_session_limit());
    }

    #[tokio::test(start_paused = true)]
    async fn refused_slots_wait_for_held_sessions_and_come_back() {
        let slots = Slots::new(4);
        let take = || slots.gate.clone().try_acquire_owned();
        // The pool holds nothing: nothing to wait for, the refusal is the poll's error (and
        // a session outside the pool is asked to give its slot up).
        let starved = slots.starved();
        assert!(!slots.refused(take().unwrap(), 0));
        assert!(starved.has_changed().unwrap());
        assert_eq!(slots.capacity(), 4);
        // Holding one: refused slots are retired down to the one held, never below.
        let held = take().unwrap();
        assert!(slots.refused(take().unwrap(), 1));
        assert!(slots.refused(take().unwrap(), 1));
        assert!(slots.refused(take().unwrap(), 1));
        assert_eq!(slots.capacity(), 1);
        assert!(take().is_err(), "the next poll waits for the held session");
        drop(held);
        assert!(take().is_ok());
        // One slot comes back per REGROW_AFTER.
        slots.regrow();
        assert_eq!(slots.capacity(), 1);
        tokio::time::advance(REGROW_AFTER).await;
        slots.regrow();
        slots.regrow();
        assert_eq!(slots.capacity(), 2);
        tokio::time::advance(REGROW_AFTER * 5).await;
        for _ in 0..5 {
            slots.regrow();
            tokio::time::advance(REGROW_AFTER).await;
        }
        assert_eq!(slots.capacity(), 4, "never past pool_size");
        assert_eq!(slots.gate.available_permits(), 4);
    }

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
