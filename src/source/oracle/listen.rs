//! Oracle wake-ups: `DBMS_ALERT` behind the same [`Listener`] as PostgreSQL's LISTEN/NOTIFY. A
//! trigger on the watched table calls `DBMS_ALERT.SIGNAL(name, '')`, delivered when the writer
//! commits; the engine's hub decides which names to wait for and when to reconnect; this is
//! only the session.
//!
//! ODPI-C is blocking and `WAITANY` blocks for its whole timeout, so each listening session is
//! owned by one blocking thread (`spawn_blocking`) that runs a loop: handle the commands the
//! hub sent (REGISTER, REMOVE, ping), then `DBMS_ALERT.WAITANY` for at most [`WAIT`], deliver
//! the alert if one came, repeat. A command is therefore answered within [`WAIT`] plus one
//! call, and the commands that follow it at once (a burst of REGISTERs) within
//! [`COMMAND_GRACE`] each. The session is dedicated (never from the pool: its registrations would leak into
//! polls), shows MODULE `orascale` and ACTION `listener` in `V$SESSION`, and runs only fixed
//! PL/SQL of orascale's own with the alert name as a bind. Every call has a `call_timeout`
//! (WAITANY's is its wait plus [`CALL_TIMEOUT`]), the connect is bounded like the pool's
//! (Oracle Net's `CONNECT_TIMEOUT`, the connection's connect slots), and dropping the session
//! breaks its WAITANY (`break_execution`) so the thread ends at once: no thread blocks
//! forever. Only a WAITANY is broken: any other call ends within its call timeout, and a break
//! sent while the thread is between calls would land on the closing REMOVEALL (ORA-01013,
//! which is then retried once). A session's first REGISTER sweeps orphaned pipes
//! (`cleanup => TRUE`, the default); once such a sweep ran out of its call timeout, later
//! sessions register with `cleanup => FALSE` (Oracle 12.2 on; an older server answers
//! PLS-00306, and the sweep comes back), or a slow sweep would end every
//! session the same way. A call that fails ends the session: `lost()` resolves with the reason and
//! the hub reconnects with its backoff. A user without `EXECUTE ON SYS.DBMS_ALERT` gets an
//! error naming that grant, which the hub logs once as its "wake-ups degraded" WARN.
//!
//! Polls come first, as on PostgreSQL ([`PollsFirst`]): the session logs on only once the pool
//! holds a session (a bounded wait; past it the connect fails and the hub backs off), a logon
//! the server refuses for want of a slot (ORA-00018, ORA-00020, ORA-02391, ORA-12516/12519/
//! 12520) is a listener outage like any other while polling goes on, and when the server
//! refuses the pool a session while the pool holds none, the session is closed so the poll
//! can have its slot (`lost()` resolves with the reason).
//!
//! The PL/SQL calls sit behind [`AlertSession`] (and the connect behind [`AlertConnect`]) so
//! the loop is tested with a scripted session on a paused clock; [`Odpi`](super::Odpi)'s is the
//! production one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use oracle::Connection;
use oracle::sql_type::OracleType;
use tokio::sync::{Semaphore, oneshot};

use super::{Connect, Fault, Logon};
use crate::source::wake::{Deliver, ListenSession, Listener, PollsFirst, SlotWanted};
use crate::source::{PasswordSource, SourceError};

/// How long one `WAITANY` waits for an alert: the bound on answering a command (REGISTER,
/// REMOVE, ping) and on ending the thread when nothing can break the call.
pub const WAIT: Duration = Duration::from_secs(1);
/// The `call_timeout` of REGISTER, REMOVE, REMOVEALL and ping, and WAITANY's on top of [`WAIT`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// After answering a command, how long the thread waits for the hub's next one before it
/// waits for alerts again: the hub sends commands one at a time, so without it each of N
/// REGISTERs (a reconnect, many new pollers) would wait for a WAITANY to end.
pub const COMMAND_GRACE: Duration = Duration::from_millis(50);
/// Longest error message kept from the driver.
const MESSAGE_MAX: usize = 300;

/// Breaks the call in progress on a session, from another thread.
pub type Breaker = Arc<dyn Fn() + Send + Sync>;

/// The `DBMS_ALERT` calls of one dedicated session. Blocking; errors are the driver's message,
/// starting with its `ORA-`/`DPI-` code.
pub trait AlertSession: Send + 'static {
    /// `DBMS_ALERT.REGISTER(:name)`; with `cleanup` false, `cleanup => FALSE` (no sweep of
    /// orphaned pipes on the session's first REGISTER).
    fn register(&mut self, name: &str, cleanup: bool) -> Result<(), String>;
    /// `DBMS_ALERT.REMOVE(:name)`.
    fn remove(&mut self, name: &str) -> Result<(), String>;
    /// `DBMS_ALERT.REMOVEALL`.
    fn remove_all(&mut self) -> Result<(), String>;
    /// `DBMS_ALERT.WAITANY` for at most `timeout`: the name of the alert (as registered), or
    /// `None` when none came.
    fn wait_any(&mut self, timeout: Duration) -> Result<Option<String>, String>;
    /// A round-trip that proves the session is alive.
    fn ping(&mut self) -> Result<(), String>;
    /// What breaks this session's call in progress from another thread.
    fn breaker(&self) -> Breaker;
}

/// Opens a dedicated alert session. Blocking: called on the listener's own thread.
pub trait AlertConnect: Send + Sync + 'static {
    fn open(&self) -> Result<Box<dyn AlertSession>, String>;
}

/// A command from the hub to the session's thread, with where to answer.
enum Command {
    Register(String, oneshot::Sender<Result<(), String>>),
    Remove(String, oneshot::Sender<Result<(), String>>),
    Ping(oneshot::Sender<Result<(), String>>),
}

/// An Oracle connection's `DBMS_ALERT` listener.
pub struct OracleListener {
    alerts: Arc<dyn AlertConnect>,
    /// The user named in the grant hint (`<user>` with external authentication).
    user: String,
    /// The connection's connect slots, shared with its pool: a hung connect holds one.
    connects: Arc<Semaphore>,
    /// The process-wide connect slots (`CONNECTS_IN_FLIGHT_PROCESS`).
    process_connects: Arc<Semaphore>,
    /// Listener threads alive now (connecting, serving or closing).
    threads: Arc<AtomicUsize>,
    /// The pool's claim on the slots comes before this listener's.
    polls_first: PollsFirst,
    /// Whether a session's first REGISTER sweeps orphaned pipes ([`Sweep`]).
    sweep: Arc<AtomicU8>,
    /// How long the thread waits for the hub's next command after answering one.
    command_grace: Duration,
}

impl OracleListener {
    /// A listener whose sessions `alerts` opens, at most as many connecting at once as
    /// `connects` (the connection's) and `process_connects` (the process's) have permits, and
    /// only beside the pool `polls_first` watches.
    pub fn new(
        alerts: Arc<dyn AlertConnect>,
        user: &str,
        connects: Arc<Semaphore>,
        process_connects: Arc<Semaphore>,
        polls_first: PollsFirst,
    ) -> Self {
        OracleListener {
            alerts,
            user: if user.is_empty() {
                "<user>".to_string()
            } else {
                user.to_ascii_uppercase()
            },
            connects,
            process_connects,
            threads: Arc::new(AtomicUsize::new(0)),
            polls_first,
            sweep: Arc::new(AtomicU8::new(Sweep::Default as u8)),
            command_grace: COMMAND_GRACE,
        }
    }

    /// The same listener with another [`COMMAND_GRACE`]: a test on a paused clock and a busy
    /// machine gives the hub (whose clock does not move) more real time to send its next
    /// command.
    pub fn with_command_grace(mut self, grace: Duration) -> Self {
        self.command_grace = grace;
        self
    }

    /// Listener threads alive now (sessions' threads, and those sending a break to one): 0 once
    /// every session is closed and its thread has ended.
    pub fn threads(&self) -> usize {
        self.threads.load(Ordering::SeqCst)
    }
}

/// Counts a listener thread while it lives.
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Listener for OracleListener {
    fn connect(
        &self,
        deliver: Deliver,
    ) -> BoxFuture<'_, Result<Box<dyn ListenSession>, SourceError>> {
        async move {
            // The pool's first session before the listener's: with SESSIONS_PER_USER below
            // pool_size + 1 the slot goes to polling. Waiting takes no thread.
            let starved = self.polls_first.admit("oracle").await?;
            // Waiting for a connect slot takes no thread; the thread holds the slots until its
            // connect really returns, so abandoned connects cannot pile threads up.
            let slot = self
                .connects
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| SourceError::Connect("oracle source is closed".into()))?;
            let process_slot = self
                .process_connects
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| SourceError::Connect("oracle connects are closed".into()))?;
            let (ready_tx, ready_rx) = oneshot::channel();
            let (commands, inbox) = mpsc::channel();
            let (lost_tx, lost) = oneshot::channel();
            let waiting = Arc::new(AtomicBool::new(false));
            self.threads.fetch_add(1, Ordering::SeqCst);
            let alive = Alive(self.threads.clone());
            let alerts = self.alerts.clone();
            let in_wait = waiting.clone();
            let loop_state = Serve {
                sweep: self.sweep.clone(),
                grace: self.command_grace,
            };
            tokio::task::spawn_blocking(move || {
                let _alive = alive;
                let opened = {
                    let _slots = (slot, process_slot);
                    alerts.open()
                };
                let session = match opened {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if ready_tx.send(Ok(session.breaker())).is_err() {
                    // The hub gave up on this connect (its timeout): close what came late.
                    close(session, true);
                    return;
                }
                let why = loop_state.serve(session, &inbox, &deliver, &in_wait);
                if let Some(why) = why {
                    let _ = lost_tx.send(why);
                }
            });
            match ready_rx.await {
                Ok(Ok(breaker)) => Ok(Box::new(AlertListen {
                    commands: Some(commands),
                    lost,
                    starved,
                    breaker,
                    waiting,
                    user: self.user.clone(),
                    threads: self.threads.clone(),
                }) as Box<dyn ListenSession>),
                Ok(Err(e)) => Err(self.polls_first.refused(to_error(&e, &self.user))),
                Err(_) => Err(SourceError::Connect(
                    "oracle: the listener's connect thread ended without an answer".into(),
                )),
            }
        }
        .boxed()
    }
}

/// How a connection's sessions REGISTER.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Sweep {
    /// `cleanup => TRUE`, the default: a session's first REGISTER sweeps orphaned pipes.
    Default = 0,
    /// `cleanup => FALSE` (Oracle 12.2 on): a sweep ran out of its call timeout once, and a
    /// sweep too slow for [`CALL_TIMEOUT`] must not fail every session for ever.
    Skip = 1,
    /// The server has no `cleanup` parameter (before 12.2: PLS-00306): the sweep for good, so
    /// a slow sweep is not tried the other way again on every session.
    Only = 2,
}

/// What the thread's loop takes from its listener.
struct Serve {
    sweep: Arc<AtomicU8>,
    grace: Duration,
}

impl Serve {
    /// The thread's loop: commands first, then one WAITANY; until the hub drops the session
    /// (`None`) or a call fails (`Some(reason)`). Closes the session either way. `waiting` is
    /// set while the thread is in (or about to enter) WAITANY: only then does a close send a
    /// break, so a break never lands on REMOVEALL.
    fn serve(
        &self,
        mut s: Box<dyn AlertSession>,
        inbox: &mpsc::Receiver<Command>,
        deliver: &Deliver,
        waiting: &AtomicBool,
    ) -> Option<String> {
        // Only a session's first REGISTER sweeps (Oracle's rule), so only its timeout says the
        // sweep is too slow.
        let mut first_register = true;
        loop {
            let mut next = inbox.try_recv();
            loop {
                let (outcome, reply) = match next {
                    Ok(Command::Register(name, reply)) => {
                        let mut cleanup = self.sweep.load(Ordering::SeqCst) != Sweep::Skip as u8;
                        let mut outcome = s.register(&name, cleanup);
                        if !cleanup && outcome.as_ref().is_err_and(|e| e.contains("PLS-00306")) {
                            // An Oracle before 12.2: REGISTER has no `cleanup` parameter. The
                            // sweep is the only REGISTER it has: back to it, for this session
                            // and the next ones (else wake-ups stay down until a restart).
                            let was = self.sweep.swap(Sweep::Only as u8, Ordering::SeqCst);
                            if was != Sweep::Only as u8 {
                                let error = outcome.as_ref().err().map_or("", |e| e);
                                tracing::warn!(%error, "oracle: this server's DBMS_ALERT.REGISTER has no cleanup parameter (Oracle before 12.2); sessions register with the sweep of orphaned pipes again");
                            }
                            cleanup = true;
                            outcome = s.register(&name, true);
                        }
                        if cleanup
                            && first_register
                            && let Err(e) = &outcome
                            && Fault::classify(e) == Fault::Timeout
                            && self
                                .sweep
                                .compare_exchange(
                                    Sweep::Default as u8,
                                    Sweep::Skip as u8,
                                    Ordering::SeqCst,
                                    Ordering::SeqCst,
                                )
                                .is_ok()
                        {
                            // The sweep of orphaned pipes outlasted the call timeout: the
                            // next sessions skip it, or they would time out the same way (not
                            // on a server that has only the sweep: there is nothing else).
                            tracing::warn!(error = %e, "oracle: DBMS_ALERT.REGISTER's sweep of orphaned pipes ran out of time; later sessions register with cleanup => FALSE");
                        }
                        first_register = false;
                        (outcome, reply)
                    }
                    Ok(Command::Remove(name, reply)) => (s.remove(&name), reply),
                    Ok(Command::Ping(reply)) => (s.ping(), reply),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        close(s, true);
                        return None;
                    }
                };
                // The hub ends the session on an error; a lost session cannot even be cleaned up.
                let lost = outcome
                    .as_ref()
                    .err()
                    .is_some_and(|e| Fault::classify(e) == Fault::SessionLost);
                let failed = outcome.as_ref().err().cloned();
                let _ = reply.send(outcome);
                if lost {
                    close(s, false);
                    return failed;
                }
                // The hub sends its next command as soon as this answer arrives: wait a moment
                // for it rather than a whole WAIT, so re-registering many alerts takes
                // milliseconds.
                next = inbox.recv_timeout(self.grace).map_err(|e| match e {
                    RecvTimeoutError::Timeout => TryRecvError::Empty,
                    RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
                });
            }
            // Set before the last look at the inbox: a close that finds it unset dropped the
            // sender first, so this look sees it and no WAITANY starts unbroken.
            waiting.store(true, Ordering::SeqCst);
            if closed(inbox) {
                waiting.store(false, Ordering::SeqCst);
                close(s, true);
                return None;
            }
            let waited = s.wait_any(WAIT);
            waiting.store(false, Ordering::SeqCst);
            match waited {
                Ok(Some(name)) => deliver(&name.to_ascii_uppercase()),
                Ok(None) => {}
                Err(e) => {
                    // Broken because the hub dropped the session (shutdown, no channel left): a
                    // close, not a loss.
                    let closing = closed(inbox);
                    close(s, Fault::classify(&e) != Fault::SessionLost);
                    return (!closing).then(|| format!("DBMS_ALERT.WAITANY: {e}"));
                }
            }
        }
    }
}

/// Whether the hub has dropped the session; commands still queued are dropped unanswered.
fn closed(inbox: &mpsc::Receiver<Command>) -> bool {
    loop {
        match inbox.try_recv() {
            Ok(_) => continue,
            Err(TryRecvError::Empty) => return false,
            Err(TryRecvError::Disconnected) => return true,
        }
    }
}

/// `REMOVEALL` (when the session can still take a call) and close. A break sent for a WAITANY
/// that had just ended lands on the next call instead (ORA-01013): REMOVEALL is tried once
/// more then, or the registrations would outlive the session's use.
fn close(mut s: Box<dyn AlertSession>, remove_all: bool) {
    if remove_all {
        let mut removed = s.remove_all();
        if removed.as_ref().is_err_and(|e| e.starts_with("ORA-01013")) {
            removed = s.remove_all();
        }
        if let Err(e) = removed {
            tracing::debug!(error = %e, "oracle: DBMS_ALERT.REMOVEALL failed while closing the listening session");
        }
    }
    drop(s);
}

/// The hub's handle on one listening session; dropping it ends the thread.
struct AlertListen {
    /// Dropped first on close, so the thread sees the end before the break reaches it.
    commands: Option<mpsc::Sender<Command>>,
    lost: oneshot::Receiver<String>,
    /// Resolves when the pool needs this session's slot.
    starved: SlotWanted,
    breaker: Breaker,
    /// Whether the thread is in WAITANY (a break is worth sending; any other call ends within
    /// its call timeout, and a break there would hit REMOVEALL).
    waiting: Arc<AtomicBool>,
    user: String,
    /// The listener's thread count, which the thread sending the break joins.
    threads: Arc<AtomicUsize>,
}

impl AlertListen {
    fn send(
        &mut self,
        command: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Command,
    ) -> BoxFuture<'_, Result<(), SourceError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .commands
            .as_ref()
            .is_some_and(|c| c.send(command(tx)).is_ok());
        async move {
            let gone = || SourceError::Query("oracle: the listening session is gone".into());
            if !sent {
                return Err(gone());
            }
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(to_error(&e, &self.user)),
                Err(_) => Err(gone()),
            }
        }
        .boxed()
    }
}

impl ListenSession for AlertListen {
    fn listen<'a>(&'a mut self, channel: &'a str) -> BoxFuture<'a, Result<(), SourceError>> {
        let name = channel.to_string();
        self.send(move |tx| Command::Register(name, tx))
    }

    fn unlisten<'a>(&'a mut self, channel: &'a str) -> BoxFuture<'a, Result<(), SourceError>> {
        let name = channel.to_string();
        self.send(move |tx| Command::Remove(name, tx))
    }

    fn ping(&mut self) -> BoxFuture<'_, Result<(), SourceError>> {
        self.send(Command::Ping)
    }

    fn lost(&mut self) -> BoxFuture<'_, String> {
        async move {
            tokio::select! {
                why = &mut self.lost => why.unwrap_or_else(|_| "the listening thread ended".to_string()),
                // The hub drops the session on this, which closes it and frees the slot.
                why = self.starved.wanted() => why,
            }
        }
        .boxed()
    }
}

impl Drop for AlertListen {
    fn drop(&mut self) {
        // Tell the thread first, then break its WAITANY so it ends now rather than after WAIT.
        drop(self.commands.take());
        if self.waiting.load(Ordering::SeqCst) {
            let breaker = self.breaker.clone();
            self.threads.fetch_add(1, Ordering::SeqCst);
            let alive = Alive(self.threads.clone());
            let send = move || {
                let _alive = alive;
                breaker();
            };
            // A break is a round-trip: never on a runtime worker.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(send);
                }
                Err(_) => send(),
            }
        }
    }
}

/// Whether `message` says the user may not call `DBMS_ALERT` (PL/SQL cannot see the package).
pub fn missing_grant(message: &str) -> bool {
    let m = message.to_ascii_uppercase();
    m.contains("DBMS_ALERT")
        && (m.contains("PLS-00201") || m.contains("PLS-00904") || m.contains("ORA-06550"))
        || m.starts_with("ORA-01031")
}

/// A driver message as the hub's error: the missing grant named, else by its class.
fn to_error(message: &str, user: &str) -> SourceError {
    if missing_grant(message) {
        let code: String = message.chars().take_while(|c| *c != ':').take(9).collect();
        return SourceError::Query(format!(
            "oracle: this user may not call DBMS_ALERT ({code}): wake-ups need GRANT EXECUTE ON SYS.DBMS_ALERT TO {user}"
        ));
    }
    super::message_error(message, Fault::classify(message))
}

/// One line, cut: how a driver error travels from the thread.
fn message(e: &oracle::Error) -> String {
    let text = match e.db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MESSAGE_MAX) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

/// The production alert sessions: a new ODPI-C connection with the connection's credentials
/// (through the same [`Connect`] seam as the pool, so Oracle Net's connect timeout applies).
pub(super) struct OdpiAlerts {
    pub(super) connect: Arc<dyn Connect>,
    pub(super) user: String,
    pub(super) password: PasswordSource,
    pub(super) connect_string: String,
}

impl AlertConnect for OdpiAlerts {
    fn open(&self) -> Result<Box<dyn AlertSession>, String> {
        let password = self.password.get().map_err(|e| e.to_string())?;
        let conn = self
            .connect
            .connect(&Logon {
                user: self.user.clone(),
                password: String::from_utf8_lossy(&password.unwrap_or_default()).into_owned(),
                connect_string: self.connect_string.clone(),
            })
            .map_err(|e| message(&e))?;
        // Sent with the first call: a DBA sees what the session is in V$SESSION.
        conn.set_module("orascale").map_err(|e| message(&e))?;
        conn.set_action("listener").map_err(|e| message(&e))?;
        Ok(Box::new(OdpiAlertSession {
            conn: Arc::new(conn),
            waitany: None,
        }))
    }
}

struct OdpiAlertSession {
    conn: Arc<Connection>,
    /// WAITANY's statement, prepared once (it runs every second).
    waitany: Option<oracle::Statement>,
}

impl OdpiAlertSession {
    fn call(&self, sql: &str, name: Option<&str>) -> Result<(), String> {
        self.conn
            .set_call_timeout(Some(CALL_TIMEOUT))
            .map_err(|e| message(&e))?;
        let result = match name {
            Some(n) => self.conn.execute(sql, &[&n]),
            None => self.conn.execute(sql, &[]),
        };
        result.map(drop).map_err(|e| message(&e))
    }
}

impl AlertSession for OdpiAlertSession {
    fn register(&mut self, name: &str, cleanup: bool) -> Result<(), String> {
        // Fixed text either way; `cleanup` is REGISTER's second parameter (Oracle 12.2 on).
        let sql = if cleanup {
            "begin dbms_alert.register(:1); end;"
        } else {
            "begin dbms_alert.register(:1, cleanup => false); end;"
        };
        self.call(sql, Some(name))
    }

    fn remove(&mut self, name: &str) -> Result<(), String> {
        self.call("begin dbms_alert.remove(:1); end;", Some(name))
    }

    fn remove_all(&mut self) -> Result<(), String> {
        self.call("begin dbms_alert.removeall; end;", None)
    }

    fn wait_any(&mut self, timeout: Duration) -> Result<Option<String>, String> {
        let secs = timeout.as_secs().max(1);
        self.conn
            .set_call_timeout(Some(Duration::from_secs(secs) + CALL_TIMEOUT))
            .map_err(|e| message(&e))?;
        if self.waitany.is_none() {
            self.waitany = Some(
                self.conn
                    .statement("begin dbms_alert.waitany(:1, :2, :3, :4); end;")
                    .build()
                    .map_err(|e| message(&e))?,
            );
        }
        let stmt = self.waitany.as_mut().expect("prepared above");
        stmt.execute(&[
            &OracleType::Varchar2(30),
            &OracleType::Varchar2(1800),
            &OracleType::Int64,
            &(secs as i64),
        ])
        .map_err(|e| message(&e))?;
        // 0: an alert; 1: the timeout passed.
        let status: i64 = stmt.bind_value(3).map_err(|e| message(&e))?;
        if status != 0 {
            return Ok(None);
        }
        stmt.bind_value::<_, Option<String>>(1)
            .map_err(|e| message(&e))
    }

    fn ping(&mut self) -> Result<(), String> {
        self.conn
            .set_call_timeout(Some(CALL_TIMEOUT))
            .map_err(|e| message(&e))?;
        self.conn.ping().map_err(|e| message(&e))
    }

    fn breaker(&self) -> Breaker {
        let conn = self.conn.clone();
        Arc::new(move || {
            let _ = conn.break_execution();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_grant_is_recognised_and_named() {
        let user = "SCOTT";
        for m in [
            "ORA-06550: line 1, column 7: PLS-00201: identifier 'DBMS_ALERT' must be declared ORA-06550: line 1, column 7: PL/SQL: Statement ignored",
            "ORA-06550: line 1, column 7: PLS-00201: identifier 'SYS.DBMS_ALERT' must be declared",
            "ORA-01031: insufficient privileges",
        ] {
            assert!(missing_grant(m), "{m}");
            let e = to_error(m, user).to_string();
            assert!(
                e.contains("GRANT EXECUTE ON SYS.DBMS_ALERT TO SCOTT"),
                "{e}"
            );
            assert!(e.starts_with("oracle: "), "{e}");
        }
        for m in [
            "ORA-00942: table or view does not exist",
            "ORA-06550: line 1, column 7: PLS-00201: identifier 'JOBS' must be declared",
            "ORA-03113: end-of-file on communication channel",
        ] {
            assert!(!missing_grant(m), "{m}");
        }
        assert_eq!(
            to_error("ORA-03113: end-of-file on communication channel", user),
            SourceError::Connect("oracle: ORA-03113: end-of-file on communication channel".into())
        );
    }

    #[test]
    fn external_authentication_names_a_placeholder_user() {
        let slots = || Arc::new(Semaphore::new(1));
        let first = || PollsFirst::new(Arc::new(crate::source::Slots::new(1)), || 1);
        let l = OracleListener::new(Arc::new(Never), "", slots(), slots(), first());
        assert_eq!(l.user, "<user>");
        let l = OracleListener::new(Arc::new(Never), "scott", slots(), slots(), first());
        assert_eq!(l.user, "SCOTT");
    }

    struct Never;

    impl AlertConnect for Never {
        fn open(&self) -> Result<Box<dyn AlertSession>, String> {
            Err("DPI-1047: Cannot locate a 64-bit Oracle Client library".into())
        }
    }
}
