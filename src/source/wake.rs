//! What a database implements for database-driven wake-ups: [`Listener`] opens one dedicated
//! session (never a pooled one) and [`ListenSession`] listens, unlistens, pings and reports its
//! loss. Everything else — one session per connection for the union of the channels live
//! pollers use, reconnects, pings, re-arming, supervision — is the engine's (`engine::wake`).

use std::sync::Arc;

use futures::future::BoxFuture;

use super::SourceError;

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
