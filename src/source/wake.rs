//! Database-driven wake-ups: a database says "the answer may have changed" and the pollers on
//! that channel poll at once instead of at their next tick.
//!
//! The part a database implements is small: [`Listener`] opens one dedicated session (never a
//! pooled one) and [`ListenSession`] listens, unlistens, pings and reports its loss. Everything
//! else is shared here, in [`Hub`]: one listening session per connection for the union of the
//! channels live pollers use, channels added and removed as pollers come and go, reconnection
//! with backoff, and a wake of every channel whenever a LISTEN (re)starts, because notifications
//! sent before it are lost and a poll covers them.
//!
//! A wake is a counter in a `watch` channel: however many notifications arrive while a poller
//! is busy, it sees one change. The poller decides when to poll (`minWakeInterval`); the hub
//! never queries anything but its own session.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::SourceError;

/// First wait before reconnecting; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A session that lived this long was healthy: the next loss starts the backoff again.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Connecting, and each LISTEN/UNLISTEN/ping, may take this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle session is pinged this often, so a silently cut link is noticed.
const PING_EVERY: Duration = Duration::from_secs(15);

/// Called with the channel name of every notification a session receives.
pub type Deliver = Arc<dyn Fn(&str) + Send + Sync>;

/// How a database opens its dedicated notification session.
pub trait Listener: Send + Sync + 'static {
    /// Connects a new session; it calls `deliver` for every notification it receives.
    fn connect(
        &self,
        deliver: Deliver,
    ) -> BoxFuture<'_, Result<Box<dyn ListenSession>, SourceError>>;
}

/// One dedicated notification session.
pub trait ListenSession: Send + 'static {
    fn listen<'a>(&'a mut self, channel: &'a str) -> BoxFuture<'a, Result<(), SourceError>>;
    fn unlisten<'a>(&'a mut self, channel: &'a str) -> BoxFuture<'a, Result<(), SourceError>>;
    /// A round-trip that proves the session is alive.
    fn ping(&mut self) -> BoxFuture<'_, Result<(), SourceError>>;
    /// Resolves, with the reason, once the session is gone. Cancel-safe.
    fn lost(&mut self) -> BoxFuture<'_, String>;
}

/// A hub's state, for the metrics rendered at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WakeStatus {
    /// Channels live pollers wait on.
    pub channels: usize,
    /// Whether a session is listening on all of them now.
    pub listening: bool,
    pub notifications: u64,
    /// Sessions re-established after one was lost or could not be opened.
    pub reconnects: u64,
    /// Polls run because of a wake.
    pub wake_polls: u64,
}

/// One connection's wake-ups.
pub struct Hub {
    inner: Arc<Inner>,
    listener: Arc<dyn Listener>,
    started: AtomicBool,
    spawn: Box<dyn Fn(BoxFuture<'static, ()>) + Send + Sync>,
}

struct Inner {
    /// The connection's name, for log lines.
    connection: String,
    channels: Mutex<HashMap<String, Channel>>,
    /// The set of wanted channels changed.
    changed: Notify,
    listening: AtomicBool,
    notifications: AtomicU64,
    reconnects: AtomicU64,
    wake_polls: AtomicU64,
}

struct Channel {
    users: usize,
    tx: watch::Sender<u64>,
}

impl Hub {
    /// A hub that runs its session task with `spawn` (the source's own task set, so closing
    /// the source ends it) once the first poller subscribes.
    pub fn new(
        connection: &str,
        listener: Arc<dyn Listener>,
        spawn: impl Fn(BoxFuture<'static, ()>) + Send + Sync + 'static,
    ) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                connection: connection.to_string(),
                channels: Mutex::new(HashMap::new()),
                changed: Notify::new(),
                listening: AtomicBool::new(false),
                notifications: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                wake_polls: AtomicU64::new(0),
            }),
            listener,
            started: AtomicBool::new(false),
            spawn: Box::new(spawn),
        }
    }

    /// Starts waiting for notifications on `channel`; listening stops once every [`Wake`] of
    /// the channel is dropped. Never blocks: the session task does the I/O.
    pub fn subscribe(&self, channel: &str) -> Wake {
        let rx = {
            let mut channels = self.inner.channels.lock().expect("wake lock");
            let c = channels
                .entry(channel.to_string())
                .or_insert_with(|| Channel {
                    users: 0,
                    tx: watch::channel(0).0,
                });
            c.users += 1;
            c.tx.subscribe()
        };
        self.inner.changed.notify_one();
        if !self.started.swap(true, Ordering::SeqCst) {
            (self.spawn)(Box::pin(run(self.inner.clone(), self.listener.clone())));
        }
        Wake {
            channel: channel.to_string(),
            rx,
            inner: self.inner.clone(),
        }
    }

    pub fn status(&self) -> WakeStatus {
        let i = &self.inner;
        WakeStatus {
            channels: i.channels.lock().expect("wake lock").len(),
            listening: i.listening.load(Ordering::Relaxed),
            notifications: i.notifications.load(Ordering::Relaxed),
            reconnects: i.reconnects.load(Ordering::Relaxed),
            wake_polls: i.wake_polls.load(Ordering::Relaxed),
        }
    }
}

/// A poller's hold on one channel.
pub struct Wake {
    channel: String,
    rx: watch::Receiver<u64>,
    inner: Arc<Inner>,
}

impl Wake {
    /// Waits for a notification not yet seen (or a reconnect). Pending forever if the hub is
    /// gone, so a poller falls back to its interval.
    pub async fn notified(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Everything delivered so far is covered by the poll about to start.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Counts a poll run because of a wake.
    pub fn record_poll(&self) {
        self.inner.wake_polls.fetch_add(1, Ordering::Relaxed);
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        let mut channels = self.inner.channels.lock().expect("wake lock");
        if let Some(c) = channels.get_mut(&self.channel) {
            c.users -= 1;
            if c.users == 0 {
                channels.remove(&self.channel);
                drop(channels);
                self.inner.changed.notify_one();
            }
        }
    }
}

impl Inner {
    fn wanted(&self) -> HashSet<String> {
        self.channels
            .lock()
            .expect("wake lock")
            .keys()
            .cloned()
            .collect()
    }

    fn wake(&self, channel: &str) {
        if let Some(c) = self.channels.lock().expect("wake lock").get(channel) {
            c.tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// A wake on `channel` with no session behind it, and the function that fires it: for tests of
/// what pollers do with wakes.
#[cfg(test)]
pub(crate) fn manual(channel: &str) -> (Wake, impl Fn() + use<>) {
    let inner = Arc::new(Inner {
        connection: "test".into(),
        channels: Mutex::new(HashMap::new()),
        changed: Notify::new(),
        listening: AtomicBool::new(true),
        notifications: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        wake_polls: AtomicU64::new(0),
    });
    let (tx, rx) = watch::channel(0);
    inner
        .channels
        .lock()
        .unwrap()
        .insert(channel.to_string(), Channel { users: 1, tx });
    let fire = {
        let inner = inner.clone();
        let channel = channel.to_string();
        move || inner.wake(&channel)
    };
    (
        Wake {
            channel: channel.to_string(),
            rx,
            inner,
        },
        fire,
    )
}

/// The session task: keeps one session listening on exactly the wanted channels.
async fn run(inner: Arc<Inner>, listener: Arc<dyn Listener>) {
    let deliver: Deliver = {
        let weak = Arc::downgrade(&inner);
        Arc::new(move |channel: &str| {
            if let Some(inner) = weak.upgrade() {
                inner.notifications.fetch_add(1, Ordering::Relaxed);
                inner.wake(channel);
            }
        })
    };
    let name = inner.connection.clone();
    let mut session: Option<Box<dyn ListenSession>> = None;
    let mut listening: HashSet<String> = HashSet::new();
    let mut backoff = BACKOFF_MIN;
    let mut connected_at = Instant::now();
    // Whether the listener was ever down while channels were wanted (for the reconnect count).
    let mut was_down = false;
    loop {
        let wanted = inner.wanted();
        if wanted.is_empty() {
            if session.take().is_some() {
                tracing::debug!(connection = %name, "no poller waits for notifications: listening session closed");
            }
            listening.clear();
            inner.listening.store(false, Ordering::Relaxed);
            inner.changed.notified().await;
            continue;
        }
        let s = match &mut session {
            Some(s) => s,
            None => match tokio::time::timeout(COMMAND_TIMEOUT, listener.connect(deliver.clone()))
                .await
            {
                Ok(Ok(s)) => {
                    listening.clear();
                    connected_at = Instant::now();
                    session.insert(s)
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!(
                            "no session within {}",
                            humantime::format_duration(COMMAND_TIMEOUT)
                        ),
                    };
                    went_down(&inner, &name, &why, &mut was_down);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        // LISTEN what is new, UNLISTEN what is gone. Every new LISTEN wakes its channel once:
        // what changed before it is covered by that poll.
        let mut failure = sync(s, &wanted, &mut listening, |c| inner.wake(c))
            .await
            .err();
        if failure.is_none() && !inner.listening.load(Ordering::Relaxed) {
            inner.listening.store(true, Ordering::Relaxed);
            if was_down {
                was_down = false;
                inner.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(connection = %name, channels = listening.len(),
                    "notification listener back: wake-ups resumed, every channel polled once");
            } else {
                tracing::info!(connection = %name, channels = listening.len(), "listening for notifications");
            }
        }
        if failure.is_none() {
            let changed = inner.changed.notified();
            tokio::select! {
                _ = changed => continue,
                why = s.lost() => failure = Some(why),
                _ = tokio::time::sleep(PING_EVERY) => {
                    match tokio::time::timeout(COMMAND_TIMEOUT, s.ping()).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => failure = Some(format!("ping failed: {e}")),
                        Err(_) => failure = Some(format!("no answer to a ping within {}", humantime::format_duration(COMMAND_TIMEOUT))),
                    }
                }
            }
        }
        // The session is gone or unusable: drop it (closing it), wait, reconnect.
        let why = failure.expect("set on every path here");
        session = None;
        listening.clear();
        went_down(&inner, &name, &why, &mut was_down);
        if connected_at.elapsed() >= STABLE_AFTER {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// LISTENs what is wanted and not listened to (calling `listened` for each), UNLISTENs what
/// is listened to and no longer wanted; the first failure stops it.
async fn sync(
    s: &mut Box<dyn ListenSession>,
    wanted: &HashSet<String>,
    listening: &mut HashSet<String>,
    listened: impl Fn(&str),
) -> Result<(), String> {
    let add: Vec<String> = wanted.difference(listening).cloned().collect();
    let remove: Vec<String> = listening.difference(wanted).cloned().collect();
    let steps = add
        .iter()
        .map(|c| (true, c))
        .chain(remove.iter().map(|c| (false, c)));
    for (adding, channel) in steps {
        let (verb, command) = if adding {
            ("LISTEN", s.listen(channel))
        } else {
            ("UNLISTEN", s.unlisten(channel))
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
            Ok(Ok(())) if adding => {
                listening.insert(channel.clone());
                listened(channel);
            }
            Ok(Ok(())) => {
                listening.remove(channel);
            }
            Ok(Err(e)) => return Err(format!("{verb} {channel}: {e}")),
            Err(_) => return Err(format!("{verb} {channel}: timed out")),
        }
    }
    Ok(())
}

/// The listener is down: say so once per outage (WARN), then at DEBUG per failed attempt.
fn went_down(inner: &Inner, name: &str, why: &str, was_down: &mut bool) {
    inner.listening.store(false, Ordering::Relaxed);
    if *was_down {
        tracing::debug!(connection = %name, error = %why, "notification listener still down");
    } else {
        *was_down = true;
        tracing::warn!(connection = %name, error = %why,
            "notification listener down: wake-ups degraded, interval polling goes on; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// A scripted listener: records commands, delivers what the test sends, loses the session
    /// on demand, refuses to connect while `refuse` is set.
    #[derive(Default)]
    struct Script {
        log: Mutex<Vec<String>>,
        refuse: AtomicBool,
        deliver: Mutex<Option<Deliver>>,
        lose: Notify,
        sessions: AtomicU64,
    }

    struct ScriptSession(Arc<Script>);

    impl Listener for Arc<Script> {
        fn connect(
            &self,
            deliver: Deliver,
        ) -> BoxFuture<'_, Result<Box<dyn ListenSession>, SourceError>> {
            async move {
                if self.refuse.load(Ordering::SeqCst) {
                    return Err(SourceError::Connect("refused".into()));
                }
                self.sessions.fetch_add(1, Ordering::SeqCst);
                *self.deliver.lock().unwrap() = Some(deliver);
                self.log.lock().unwrap().push("connect".into());
                Ok(Box::new(ScriptSession(self.clone())) as Box<dyn ListenSession>)
            }
            .boxed()
        }
    }

    impl ListenSession for ScriptSession {
        fn listen<'a>(&'a mut self, c: &'a str) -> BoxFuture<'a, Result<(), SourceError>> {
            self.0.log.lock().unwrap().push(format!("listen {c}"));
            async { Ok(()) }.boxed()
        }
        fn unlisten<'a>(&'a mut self, c: &'a str) -> BoxFuture<'a, Result<(), SourceError>> {
            self.0.log.lock().unwrap().push(format!("unlisten {c}"));
            async { Ok(()) }.boxed()
        }
        fn ping(&mut self) -> BoxFuture<'_, Result<(), SourceError>> {
            async { Ok(()) }.boxed()
        }
        fn lost(&mut self) -> BoxFuture<'_, String> {
            async move {
                self.0.lose.notified().await;
                "killed".to_string()
            }
            .boxed()
        }
    }

    impl Drop for ScriptSession {
        fn drop(&mut self) {
            self.0.sessions.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn hub(script: &Arc<Script>) -> Hub {
        Hub::new("c", Arc::new(script.clone()), |f| {
            tokio::spawn(f);
        })
    }

    fn deliver(script: &Script, channel: &str) {
        let d = script.deliver.lock().unwrap().clone().unwrap();
        d(channel);
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    fn log(script: &Script) -> Vec<String> {
        std::mem::take(&mut *script.log.lock().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn one_session_for_the_union_of_channels() {
        let script = Arc::new(Script::default());
        let hub = hub(&script);
        let mut a1 = hub.subscribe("a");
        let a2 = hub.subscribe("a");
        let mut b = hub.subscribe("b");
        settle().await;
        let mut got = log(&script);
        got.sort();
        assert_eq!(got, ["connect", "listen a", "listen b"]);
        assert_eq!(script.sessions.load(Ordering::SeqCst), 1);
        assert!(hub.status().listening);
        // Each new LISTEN wakes its channel once.
        a1.mark_seen();
        b.mark_seen();
        deliver(&script, "a");
        deliver(&script, "a");
        deliver(&script, "a");
        tokio::time::timeout(Duration::from_secs(1), a1.notified())
            .await
            .expect("a notification wakes a");
        a1.mark_seen();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), a1.notified())
                .await
                .is_err(),
            "three notifications are one change"
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(1), b.notified())
                .await
                .is_err(),
            "b is not woken by a"
        );
        // The channel stays while one user is left; goes with the last.
        drop(a2);
        settle().await;
        assert!(log(&script).is_empty());
        drop(a1);
        settle().await;
        assert_eq!(log(&script), ["unlisten a"]);
        drop(b);
        settle().await;
        // No channel left: the session is closed (which ends its LISTENs).
        assert!(log(&script).is_empty());
        assert_eq!(script.sessions.load(Ordering::SeqCst), 0);
        assert_eq!(hub.status().channels, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_session_reconnects_and_wakes_every_channel() {
        let script = Arc::new(Script::default());
        let hub = hub(&script);
        let mut a = hub.subscribe("a");
        let mut b = hub.subscribe("b");
        settle().await;
        a.mark_seen();
        b.mark_seen();
        log(&script);
        script.refuse.store(true, Ordering::SeqCst);
        script.lose.notify_one();
        settle().await;
        assert!(!hub.status().listening, "down while the database refuses");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(script.sessions.load(Ordering::SeqCst), 0);
        script.refuse.store(false, Ordering::SeqCst);
        tokio::time::sleep(BACKOFF_MAX + Duration::from_secs(1)).await;
        let mut got = log(&script);
        got.sort();
        assert_eq!(got, ["connect", "listen a", "listen b"]);
        let status = hub.status();
        assert!(status.listening);
        assert_eq!(status.reconnects, 1);
        for w in [&mut a, &mut b] {
            tokio::time::timeout(Duration::from_millis(1), w.notified())
                .await
                .expect("every channel is woken after a reconnect");
        }
    }
}
