//! The push state machine behind KEDA's server streams, generic over what is sent.
//!
//! A [`Push`] follows one trigger's poller through a [`Feed`] (a `Subscription` in the server)
//! and asks a [`Policy`] what each new state of the value means on the wire. The machine owns
//! what every push stream shares: it ends with OK on shutdown, stays open and silent while the
//! value is an error, moves onto the poller that replaces one that stopped on its own (one poll
//! interval later, so a poller that keeps dying is not restarted in a loop), and re-sends the
//! policy's message at the resend interval while the policy has one. The policy owns only the
//! meaning: [`ActiveEdges`] sends `true` on inactive→active edges and never `false`
//! (StreamIsActive); [`SpecChanges`] sends the current metric spec at open, then only a real
//! change of it, never a repeat and never an empty list (StreamMetricSpec). A metric spec
//! stream follows its trigger's target poller through [`LatestPoll`] (no staleness allowance:
//! a failing target query is the static fallback at once), or, without a target query, no
//! poller at all ([`NoPoller`]: the spec once, then silence until shutdown).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proto::{GetMetricSpecResponse, IsActiveResponse, MetricSpec};
use super::target::{Target, to_metric_spec};
use crate::engine::deadline_after;
use crate::engine::{EngineError, Reading, StreamSlot, Subscription};

/// What a push stream reads: a poller's cached value, and whether that poller still runs.
pub trait Feed: Send {
    type Value;
    /// The value now, or why there is none (no result yet, the database fails, the poller
    /// stopped).
    fn current(&self) -> Result<Self::Value, String>;
    /// Waits for the poller's next publish: `false` when the poller has ended.
    fn published(&mut self) -> impl Future<Output = bool> + Send;
    /// Whether the poller ended on its own (not because the server is shutting down).
    fn stopped(&self) -> bool;
    /// Moves onto the trigger's live poller (the registry replaces a stopped one).
    fn renew(&mut self) -> Result<(), EngineError>;
}

impl Feed for Subscription {
    type Value = Reading;

    fn current(&self) -> Result<Reading, String> {
        Subscription::current(self)
    }

    async fn published(&mut self) -> bool {
        self.changed().await.is_ok()
    }

    fn stopped(&self) -> bool {
        self.poller_stopped()
    }

    fn renew(&mut self) -> Result<(), EngineError> {
        Subscription::renew(self)
    }
}

/// A poller read as a metric spec target reads it: the latest poll's value only when that poll
/// succeeded ([`Subscription::latest`]), so a failure is the fallback at once, not after the
/// staleness limit.
pub struct LatestPoll(pub Subscription);

impl Feed for LatestPoll {
    type Value = Reading;

    fn current(&self) -> Result<Reading, String> {
        self.0.latest()
    }

    async fn published(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }

    fn stopped(&self) -> bool {
        self.0.poller_stopped()
    }

    fn renew(&mut self) -> Result<(), EngineError> {
        self.0.renew()
    }
}

/// The feed of a stream that follows no poller (a metric spec stream of a trigger without a
/// target query): there is never a value, and never a publish; it holds its place under
/// `--max-streams` until dropped.
pub struct NoPoller(pub StreamSlot);

/// What [`NoPoller`] gives a policy: there is no target query to read.
pub const NO_TARGET_QUERY: &str = "the trigger has no targetQuery";

impl Feed for NoPoller {
    type Value = Reading;

    fn current(&self) -> Result<Reading, String> {
        Err(NO_TARGET_QUERY.into())
    }

    async fn published(&mut self) -> bool {
        futures::future::pending().await
    }

    fn stopped(&self) -> bool {
        false
    }

    fn renew(&mut self) -> Result<(), EngineError> {
        Ok(())
    }
}

/// What a stream sends as its trigger's value changes.
pub trait Policy<V>: Send {
    type Message;
    /// Takes in the value (at open, on every publish, after moving to a new poller) — or why
    /// there is none, "no result yet" included, so a policy can answer at open without waiting
    /// for the first poll — and returns what to send now, if anything.
    fn update(&mut self, value: Result<V, String>) -> Option<Self::Message>;
    /// What to send again every resend interval after a send, while there is something:
    /// `None` stops the re-sends until the next send. By default, nothing is repeated.
    fn repeat(&self) -> Option<Self::Message> {
        None
    }
    /// The value as it is at a re-send (no publish since the last one, but it may have gone
    /// stale): the policy updates what it would repeat, sending nothing itself.
    fn refresh(&mut self, value: Result<V, String>) {
        let _ = value;
    }
}

/// StreamIsActive's policy: `true` on an inactive→active edge (at open too, if the value is
/// already active) and again every resend interval while active; never `false` (ignored by
/// KEDA ≥ 2.18, harmful before); nothing while the value is an error, whose activity is unknown.
pub struct ActiveEdges {
    activation: f64,
    /// The last known activity; `None` before the first value and while the value is an error.
    active: Option<bool>,
}

impl ActiveEdges {
    pub fn new(activation: f64) -> Self {
        ActiveEdges {
            activation,
            active: None,
        }
    }
}

impl Policy<Reading> for ActiveEdges {
    type Message = IsActiveResponse;

    fn update(&mut self, value: Result<Reading, String>) -> Option<IsActiveResponse> {
        // Active means above the activation threshold, strictly (as KEDA's own SQL scalers).
        let active = value.ok().map(|r| r.value > self.activation);
        let edge = active == Some(true) && self.active != Some(true);
        self.active = active;
        edge.then_some(IsActiveResponse { result: true })
    }

    fn repeat(&self) -> Option<IsActiveResponse> {
        (self.active == Some(true)).then_some(IsActiveResponse { result: true })
    }

    fn refresh(&mut self, value: Result<Reading, String>) {
        self.active = value.ok().map(|r| r.value > self.activation);
    }
}

/// StreamMetricSpec's policy: the trigger's metric spec at open (whatever the target poller's
/// state: before its first poll, that is the static target), then one message per real change
/// of the whole spec it would send, never a repeat (each costs KEDA a reconcile) and never an
/// empty list (KEDA would silently drop the trigger's metric). The target is resolved exactly
/// as GetMetricSpec resolves it ([`Target::resolve`]).
pub struct SpecChanges {
    metric_name: String,
    /// `targetQueryValue`: the target without a target query, and its fallback with one.
    fallback: f64,
    /// Whether the feed is a target poller: without one the spec is the static one.
    queried: bool,
    /// The spec sent last.
    sent: Option<MetricSpec>,
}

impl SpecChanges {
    pub fn new(metric_name: String, fallback: f64, queried: bool) -> Self {
        SpecChanges {
            metric_name,
            fallback,
            queried,
            sent: None,
        }
    }
}

impl Policy<Reading> for SpecChanges {
    type Message = GetMetricSpecResponse;

    fn update(&mut self, value: Result<Reading, String>) -> Option<GetMetricSpecResponse> {
        let target = Target::resolve(self.fallback, self.queried.then_some(value));
        let spec = to_metric_spec(&self.metric_name, target.value);
        if self.sent.as_ref() == Some(&spec) {
            return None;
        }
        self.sent = Some(spec.clone());
        Some(GetMetricSpecResponse {
            metric_specs: vec![spec],
        })
    }
}

/// The state of one push stream.
pub struct Push<F, P> {
    feed: F,
    policy: P,
    shutdown: CancellationToken,
    resend: Duration,
    /// When to re-send the policy's message, while it has one.
    resend_at: Option<Instant>,
    opened: bool,
    /// How long a stream whose poller stopped on its own waits before moving to a new one.
    renew_every: Duration,
    /// Set while the poller is stopped: when to try the trigger's live poller again.
    renew_at: Option<Instant>,
}

impl<F, P> Push<F, P>
where
    F: Feed,
    P: Policy<F::Value>,
{
    /// A stream over `feed` that re-sends every `resend` and, after its poller stopped, waits
    /// one `poll_interval` (between 1 s and 1 min) before moving to the replacement.
    pub fn new(
        feed: F,
        policy: P,
        resend: Duration,
        poll_interval: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Push {
            feed,
            policy,
            shutdown,
            resend,
            resend_at: None,
            opened: false,
            renew_every: poll_interval.clamp(Duration::from_secs(1), Duration::from_secs(60)),
            renew_at: None,
        }
    }

    /// The messages, until the stream should end with OK (shutdown).
    pub fn into_stream(self) -> impl futures::Stream<Item = P::Message> + Send
    where
        F: 'static,
        P: 'static,
        P::Message: Send,
    {
        futures::stream::unfold(self, |mut push| async move {
            let msg = push.next().await?;
            Some((msg, push))
        })
    }

    /// The next message to send, or `None` when the stream should end with OK (shutdown). A
    /// poller that stopped on its own leaves the stream open and silent until it moves to the
    /// poller that replaces it.
    pub async fn next(&mut self) -> Option<P::Message> {
        if !self.opened {
            self.opened = true;
            if let Some(msg) = self.judge() {
                return Some(msg);
            }
        }
        loop {
            // One timer for both deadlines (a stream is mostly idle; its size is per stream).
            let deadline = match (self.renew_at, self.resend_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return None,
                published = self.feed.published(), if self.renew_at.is_none() => {
                    if !published {
                        if !self.feed.stopped() {
                            return None; // stopped because asked to: shutting down
                        }
                        self.renew_at = Some(deadline_after(Instant::now(), self.renew_every));
                    }
                    // After a stop the value is the poller's reason: the policy learns that
                    // the value is unknown.
                    if let Some(msg) = self.judge() {
                        return Some(msg);
                    }
                }
                _ = sleep_until_opt(deadline) => {
                    let now = Instant::now();
                    if self.renew_at.is_some_and(|at| at <= now) {
                        match self.feed.renew() {
                            Ok(()) => {
                                self.renew_at = None;
                                if let Some(msg) = self.judge() {
                                    return Some(msg);
                                }
                            }
                            Err(EngineError::ShuttingDown) => return None,
                            Err(_) => self.renew_at = Some(deadline_after(now, self.renew_every)),
                        }
                    }
                    if self.resend_at.is_some_and(|at| at <= now) {
                        // The value is looked at again first: one that went stale since the
                        // last publish (a poller backing off, say) stops the re-sends instead
                        // of repeating what the stream remembers.
                        self.policy.refresh(self.feed.current());
                        match self.policy.repeat() {
                            Some(msg) => {
                                self.resend_at = Some(deadline_after(now, self.resend));
                                return Some(msg);
                            }
                            None => self.resend_at = None,
                        }
                    }
                }
            }
        }
    }

    /// Hands the current value to the policy; a send (re)starts the resend interval, and the
    /// re-sends stop as soon as the policy has nothing to repeat.
    fn judge(&mut self) -> Option<P::Message> {
        let msg = self.policy.update(self.feed.current());
        if self.policy.repeat().is_none() {
            self.resend_at = None;
        } else if msg.is_some() {
            self.resend_at = Some(deadline_after(Instant::now(), self.resend));
        }
        msg
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::watch;

    use super::*;

    const RESEND: Duration = Duration::from_secs(30);
    const POLL: Duration = Duration::from_secs(5);
    /// Much longer than any interval here: "nothing within an hour" on the paused clock.
    const HOUR: Duration = Duration::from_secs(3600);

    /// One poller as a stream sees it: its channel, and why it ended on its own, if it did.
    struct Line<V> {
        rx: watch::Receiver<Result<V, String>>,
        stopped: Arc<Mutex<Option<String>>>,
    }

    type Next<V> = Arc<Mutex<Result<Line<V>, EngineError>>>;

    /// The test's side of a [`FakeFeed`]: publishes values, stops the poller, offers the next.
    struct Poller<V> {
        tx: Option<watch::Sender<Result<V, String>>>,
        stopped: Arc<Mutex<Option<String>>>,
        /// What `renew` finds: the replacement poller, or the error the registry gives.
        next: Next<V>,
        renewals: Arc<Mutex<u32>>,
    }

    struct FakeFeed<V> {
        line: Line<V>,
        next: Next<V>,
        renewals: Arc<Mutex<u32>>,
    }

    fn line<V>(first: Result<V, String>) -> (watch::Sender<Result<V, String>>, Line<V>) {
        let (tx, rx) = watch::channel(first);
        let stopped = Arc::new(Mutex::new(None));
        (tx, Line { rx, stopped })
    }

    fn fake<V>(first: Result<V, String>) -> (Poller<V>, FakeFeed<V>) {
        let (tx, line) = line(first);
        let next = Arc::new(Mutex::new(Err(EngineError::Unavailable(
            "no poller yet".into(),
        ))));
        let renewals = Arc::new(Mutex::new(0));
        let poller = Poller {
            tx: Some(tx),
            stopped: line.stopped.clone(),
            next: next.clone(),
            renewals: renewals.clone(),
        };
        let feed = FakeFeed {
            line,
            next,
            renewals,
        };
        (poller, feed)
    }

    impl<V> Poller<V> {
        fn publish(&self, v: Result<V, String>) {
            self.tx
                .as_ref()
                .expect("running")
                .send(v)
                .expect("the stream listens");
        }
        /// Ends the poller on its own (as a panic does): its channel closes, with a reason.
        fn stop(&mut self) {
            *self.stopped.lock().unwrap() = Some("it panicked".into());
            self.tx.take();
        }
        /// Ends the poller because the server asked it to: its channel closes, no reason.
        fn shut(&mut self) {
            self.tx.take();
        }
        /// The poller `renew` will move to.
        fn replace(&mut self, first: Result<V, String>) {
            let (tx, line) = line(first);
            self.tx = Some(tx);
            self.stopped = line.stopped.clone();
            *self.next.lock().unwrap() = Ok(line);
        }
        fn renewals(&self) -> u32 {
            *self.renewals.lock().unwrap()
        }
    }

    impl<V: Clone + Send + Sync> Feed for FakeFeed<V> {
        type Value = V;
        fn current(&self) -> Result<V, String> {
            if let Some(reason) = &*self.line.stopped.lock().unwrap() {
                return Err(format!("poller stopped: {reason}"));
            }
            self.line.rx.borrow().clone()
        }
        async fn published(&mut self) -> bool {
            self.line.rx.changed().await.is_ok()
        }
        fn stopped(&self) -> bool {
            self.line.stopped.lock().unwrap().is_some()
        }
        fn renew(&mut self) -> Result<(), EngineError> {
            *self.renewals.lock().unwrap() += 1;
            let mut next = self.next.lock().unwrap();
            let again = match &*next {
                Err(EngineError::ShuttingDown) => EngineError::ShuttingDown,
                _ => EngineError::Unavailable("no poller yet".into()),
            };
            self.line = std::mem::replace(&mut *next, Err(again))?;
            Ok(())
        }
    }

    /// A policy that records every value it is handed and answers from a script: it sends
    /// `"<value>"` for values in `send`, and repeats `"again"` while `repeating`.
    #[derive(Clone, Default)]
    struct Recorder {
        seen: Arc<Mutex<Vec<Result<u32, String>>>>,
        send: Vec<u32>,
        repeating: Arc<Mutex<bool>>,
    }

    impl Recorder {
        fn sending(send: &[u32]) -> Self {
            Recorder {
                send: send.to_vec(),
                ..Default::default()
            }
        }
        fn seen(&self) -> Vec<Result<u32, String>> {
            self.seen.lock().unwrap().clone()
        }
        fn repeat_while(&self, on: bool) {
            *self.repeating.lock().unwrap() = on;
        }
    }

    impl Policy<u32> for Recorder {
        type Message = String;
        fn update(&mut self, value: Result<u32, String>) -> Option<String> {
            self.seen.lock().unwrap().push(value.clone());
            value
                .ok()
                .filter(|v| self.send.contains(v))
                .map(|v| v.to_string())
        }
        fn repeat(&self) -> Option<String> {
            self.repeating.lock().unwrap().then(|| "again".to_string())
        }
    }

    fn open<V, P>(feed: FakeFeed<V>, policy: P) -> (Push<FakeFeed<V>, P>, CancellationToken)
    where
        V: Clone + Send + Sync,
        P: Policy<V>,
    {
        let shutdown = CancellationToken::new();
        let push = Push::new(feed, policy, RESEND, POLL, shutdown.clone());
        (push, shutdown)
    }

    /// The next message within an hour of (paused) time, and when it came.
    async fn next<F: Feed, P: Policy<F::Value>>(
        push: &mut Push<F, P>,
    ) -> Option<(P::Message, Duration)> {
        let start = Instant::now();
        tokio::time::timeout(HOUR, push.next())
            .await
            .map(|m| m.map(|m| (m, start.elapsed())))
            .unwrap_or(None)
    }

    /// Whether the stream stays open and silent for an hour.
    async fn silent<F: Feed, P: Policy<F::Value>>(push: &mut Push<F, P>) -> bool {
        tokio::time::timeout(HOUR, push.next()).await.is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn the_policy_sees_the_value_at_open_even_before_the_first_poll() {
        let (_poller, feed) = fake::<u32>(Err("no result yet".into()));
        let policy = Recorder::sending(&[]);
        let (mut push, _) = open(feed, policy.clone());
        assert!(silent(&mut push).await);
        assert_eq!(policy.seen(), vec![Err("no result yet".to_string())]);

        let (_poller, feed) = fake::<u32>(Ok(7));
        let policy = Recorder::sending(&[7]);
        let (mut push, _) = open(feed, policy.clone());
        assert_eq!(next(&mut push).await, Some(("7".into(), Duration::ZERO)));
        assert_eq!(policy.seen(), vec![Ok(7)]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_publish_is_judged_once_and_only_the_policys_answers_are_sent() {
        let (poller, feed) = fake::<u32>(Ok(1));
        let policy = Recorder::sending(&[3]);
        let (mut push, _) = open(feed, policy.clone());
        let task = tokio::spawn(async move {
            let first = next(&mut push).await;
            (first, push)
        });
        for v in [2, 2, 3] {
            tokio::task::yield_now().await;
            poller.publish(Ok(v));
            tokio::task::yield_now().await;
        }
        let (first, mut push) = task.await.unwrap();
        assert_eq!(first.map(|(m, _)| m), Some("3".into()));
        assert_eq!(policy.seen(), vec![Ok(1), Ok(2), Ok(2), Ok(3)]);
        // Nothing to repeat: the stream then stays silent.
        assert!(silent(&mut push).await);
        assert_eq!(policy.seen().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_follow_the_resend_interval_and_stop_with_the_policy() {
        let (poller, feed) = fake::<u32>(Ok(1));
        let policy = Recorder::sending(&[1]);
        policy.repeat_while(true);
        let (mut push, _) = open(feed, policy.clone());
        assert_eq!(next(&mut push).await, Some(("1".into(), Duration::ZERO)));
        for _ in 0..3 {
            assert_eq!(next(&mut push).await, Some(("again".into(), RESEND)));
        }
        // A publish with nothing to send leaves the interval running from the last send.
        tokio::time::advance(RESEND / 3).await;
        poller.publish(Ok(2));
        assert_eq!(
            next(&mut push).await,
            Some(("again".into(), RESEND * 2 / 3))
        );
        // The policy has nothing to repeat after the next value: the re-sends stop at once.
        policy.repeat_while(false);
        poller.publish(Ok(2));
        assert!(silent(&mut push).await);
        // A send starts the interval again, from the send.
        policy.repeat_while(true);
        tokio::time::advance(RESEND / 2).await;
        poller.publish(Ok(1));
        assert_eq!(next(&mut push).await, Some(("1".into(), Duration::ZERO)));
        assert_eq!(next(&mut push).await, Some(("again".into(), RESEND)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_poller_is_replaced_one_poll_interval_later_and_retried_until_it_is() {
        let (mut poller, feed) = fake::<u32>(Ok(1));
        let policy = Recorder::sending(&[5]);
        let (mut push, _) = open(feed, policy.clone());
        let task = tokio::spawn(async move {
            let got = next(&mut push).await;
            (got, push)
        });
        tokio::task::yield_now().await;
        poller.stop();
        // No replacement for two tries, then one: the stream moves and judges its value.
        tokio::time::sleep(POLL * 2 + POLL / 2).await;
        assert_eq!(poller.renewals(), 2);
        poller.replace(Ok(5));
        let (got, mut push) = task.await.unwrap();
        assert_eq!(got, Some(("5".into(), POLL * 3)));
        assert_eq!(poller.renewals(), 3);
        assert_eq!(
            policy.seen(),
            vec![Ok(1), Err("poller stopped: it panicked".into()), Ok(5)]
        );
        // The new poller's publishes reach the stream.
        poller.publish(Ok(5));
        assert_eq!(next(&mut push).await, Some(("5".into(), Duration::ZERO)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_ends_on_shutdown_and_when_its_poller_is_stopped_for_it() {
        let (_poller, feed) = fake::<u32>(Ok(1));
        let (mut push, shutdown) = open(feed, Recorder::sending(&[]));
        shutdown.cancel();
        assert_eq!(next(&mut push).await, None);

        // The poller's channel closes without a stop reason: the server is shutting down.
        let (mut poller, feed) = fake::<u32>(Ok(1));
        let (mut push, _) = open(feed, Recorder::sending(&[]));
        poller.shut();
        assert_eq!(next(&mut push).await, None);

        // Renewing finds the registry shutting down.
        let (mut poller, feed) = fake::<u32>(Ok(1));
        let (mut push, _) = open(feed, Recorder::sending(&[]));
        *poller.next.lock().unwrap() = Err(EngineError::ShuttingDown);
        poller.stop();
        assert_eq!(next(&mut push).await, None);
        assert_eq!(poller.renewals(), 1);
    }

    fn reading(value: f64) -> Result<Reading, String> {
        Ok(Reading {
            value,
            at: Instant::now(),
        })
    }

    #[test]
    fn active_edges_send_true_on_edges_only_and_never_false() {
        let t = Some(IsActiveResponse { result: true });
        let mut p = ActiveEdges::new(1.0);
        for (value, want, repeats) in [
            (Err("no result yet".to_string()), None, false),
            (reading(1.0), None, false), // at the threshold is not active: strictly above
            (reading(2.0), t, true),     // the edge
            (reading(3.0), None, true),  // still active: the re-sends say it
            (reading(0.0), None, false), // inactive: never `false`
            (reading(5.0), t, true),
            (Err("connection refused".to_string()), None, false), // unknown: silent
            (reading(5.0), t, true), // known again, active: an edge from unknown
        ] {
            assert_eq!(p.update(value.clone()), want, "{value:?}");
            assert_eq!(p.repeat().is_some(), repeats, "{value:?}");
        }
        // At a re-send the value is looked at again: gone stale (no publish: the poller backs
        // off), the stream stops repeating `true`.
        p.refresh(Err(
            "connection refused (last good value older than the staleness limit)".into(),
        ));
        assert_eq!(p.repeat(), None);
    }

    fn target_of(msg: &GetMetricSpecResponse) -> f64 {
        assert_eq!(
            msg.metric_specs.len(),
            1,
            "never empty, never more: {msg:?}"
        );
        assert_eq!(msg.metric_specs[0].metric_name, "m");
        msg.metric_specs[0].target_size_float
    }

    #[test]
    fn spec_changes_send_the_spec_at_open_then_only_real_changes() {
        let mut p = SpecChanges::new("m".into(), 5.0, true);
        // Before the first poll: the static spec at once.
        let first = p.update(Err("no result yet".into())).expect("sent at open");
        assert_eq!(target_of(&first), 5.0);
        assert_eq!(p.repeat(), None, "never a repeat");
        for (value, want) in [
            (reading(5.0), None),      // the query agrees with the fallback: no change
            (reading(8.0), Some(8.0)), // a real change
            (reading(8.0), None),      // a steady value: nothing
            (reading(0.0), Some(5.0)), // not a target: the fallback
            (reading(0.0005), None),   // still the fallback
            (Err("no such table".into()), None), // failing: the fallback, unchanged
            (reading(12.0), Some(12.0)), // recovered
            (Err("connection refused".into()), Some(5.0)),
        ] {
            let got = p.update(value.clone()).map(|m| target_of(&m));
            assert_eq!(got, want, "{value:?}");
            assert_eq!(p.repeat(), None);
        }
    }

    #[test]
    fn changes_keda_cannot_see_send_nothing() {
        let mut p = SpecChanges::new("m".into(), 5.0, true);
        assert_eq!(target_of(&p.update(reading(3.0000001)).unwrap()), 3.0);
        assert_eq!(
            p.update(reading(3.0000002)),
            None,
            "below 0.001: no message"
        );
        assert_eq!(p.update(reading(3.0004)), None);
        assert_eq!(target_of(&p.update(reading(3.001)).unwrap()), 3.001);
        // Above the greatest target: the fallback.
        assert_eq!(target_of(&p.update(reading(1e16)).unwrap()), 5.0);
    }

    #[test]
    fn without_a_target_query_the_spec_is_static() {
        let mut p = SpecChanges::new("m".into(), 2.0, false);
        assert_eq!(
            target_of(&p.update(Err(NO_TARGET_QUERY.into())).unwrap()),
            2.0
        );
        assert_eq!(p.update(reading(9.0)), None, "values are not targets here");
    }

    #[tokio::test(start_paused = true)]
    async fn a_spec_stream_sends_at_open_then_once_per_change_and_nothing_while_steady() {
        let (poller, feed) = fake::<Reading>(Err("no result yet".into()));
        let (mut push, shutdown) = open(feed, SpecChanges::new("m".into(), 5.0, true));
        let (msg, after) = next(&mut push).await.expect("at open");
        assert_eq!((target_of(&msg), after), (5.0, Duration::ZERO));
        poller.publish(reading(7.0));
        assert_eq!(next(&mut push).await.map(|(m, _)| target_of(&m)), Some(7.0));
        // Publishes of the same target (a failure streak's, say) and an hour of quiet: nothing.
        poller.publish(reading(7.0));
        assert!(silent(&mut push).await);
        poller.publish(Err("connection refused".into()));
        assert_eq!(next(&mut push).await.map(|(m, _)| target_of(&m)), Some(5.0));
        poller.publish(Err("connection refused again".into()));
        assert!(silent(&mut push).await);
        shutdown.cancel();
        assert!(next(&mut push).await.is_none(), "ends on shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn stream_is_active_pushes_edges_and_resends_while_active() {
        let (poller, feed) = fake(reading(9.0));
        let (mut push, _) = open(feed, ActiveEdges::new(1.0));
        let t = IsActiveResponse { result: true };
        assert_eq!(next(&mut push).await, Some((t, Duration::ZERO)));
        assert_eq!(next(&mut push).await, Some((t, RESEND)));
        // Inactive, then an error: silent, and no re-sends.
        poller.publish(reading(0.0));
        assert!(silent(&mut push).await);
        poller.publish(Err("connection refused".into()));
        assert!(silent(&mut push).await);
        poller.publish(reading(9.0));
        assert_eq!(next(&mut push).await, Some((t, Duration::ZERO)));
        poller.publish(Err("connection refused".into()));
        assert!(silent(&mut push).await);
    }
}
