//! PostgreSQL wake-ups: LISTEN/NOTIFY on one dedicated session per connection (never a pooled
//! one: its LISTEN state would leak into other polls). The engine's hub decides what to listen
//! on and when to reconnect; this is only the session.
//!
//! Polls come first: the session takes a connection slot only once the pool holds a session
//! (so with a role limited to fewer slots than `pool_size + 1` the pool is served first), and
//! it gives its slot up when the server refuses the pool a session while the pool holds none.
//! A refused connect (SQLSTATE 53300) is the hub's to back off from; wake-ups degrade and
//! interval polling goes on.

use std::sync::Arc;

use deadpool::managed::Pool;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_postgres::Client;

use super::{Sessions, describe};
use crate::source::wake::{Deliver, ListenSession, Listener, PollsFirst, SlotWanted};
use crate::source::{Slots, SourceError};

/// LISTEN/UNLISTEN/ping may not run longer on the server than this.
const STATEMENT_TIMEOUT_MS: u64 = 10_000;

pub(super) struct PgListener {
    pub(super) sessions: Sessions,
    /// The connection's config with the listener's application_name.
    pub(super) config: tokio_postgres::Config,
    /// The pool whose first session comes before the listener's.
    pub(super) pool: Pool<Sessions>,
    /// Says when the pool was refused a session while holding none.
    pub(super) slots: Arc<Slots>,
}

struct PgSession {
    client: Client,
    lost: tokio::sync::oneshot::Receiver<String>,
    /// Resolves when the pool needs this session's slot.
    starved: SlotWanted,
}

/// Closes one idle session of `pool` (dropping a client closes its connection): false when
/// every session is in use.
fn close_one_idle(pool: &Pool<Sessions>) -> bool {
    crate::source::take_one_idle(pool).is_some()
}

/// `"name"`: channel names are validated identifiers; quoting keeps their case exactly.
fn quoted(channel: &str) -> String {
    format!("\"{}\"", channel.replace('"', "\"\""))
}

fn failed(e: tokio_postgres::Error) -> SourceError {
    SourceError::Query(format!("postgres: {}", describe(&e)))
}

impl Listener for PgListener {
    fn connect(
        &self,
        deliver: Deliver,
    ) -> BoxFuture<'_, Result<Box<dyn ListenSession>, SourceError>> {
        async move {
            // The pool's first session before the listener's: with a connection limit below
            // pool_size + 1 the slot goes to polling.
            let (pool, idle) = (self.pool.clone(), self.pool.clone());
            let polls_first = PollsFirst::new(self.slots.clone(), move || pool.status().size)
                .closing_idle(move || close_one_idle(&idle));
            let starved = polls_first.admit("postgres").await?;
            let (tx, lost) = tokio::sync::oneshot::channel();
            let client = self
                .sessions
                .open(self.config.clone(), Some((deliver, tx)))
                .await
                .map_err(|e| polls_first.refused(e))?;
            client
                .batch_execute(&format!("SET statement_timeout = {STATEMENT_TIMEOUT_MS}"))
                .await
                .map_err(failed)?;
            Ok(Box::new(PgSession {
                client,
                lost,
                starved,
            }) as Box<dyn ListenSession>)
        }
        .boxed()
    }
}

impl PgSession {
    fn run<'a>(&'a mut self, sql: String) -> BoxFuture<'a, Result<(), SourceError>> {
        async move { self.client.batch_execute(&sql).await.map_err(failed) }.boxed()
    }
}

impl ListenSession for PgSession {
    fn listen<'a>(&'a mut self, channel: &'a str) -> BoxFuture<'a, Result<(), SourceError>> {
        self.run(format!("LISTEN {}", quoted(channel)))
    }

    fn unlisten<'a>(&'a mut self, channel: &'a str) -> BoxFuture<'a, Result<(), SourceError>> {
        self.run(format!("UNLISTEN {}", quoted(channel)))
    }

    fn ping(&mut self) -> BoxFuture<'_, Result<(), SourceError>> {
        self.run("SELECT 1".to_string())
    }

    fn lost(&mut self) -> BoxFuture<'_, String> {
        async move {
            tokio::select! {
                why = &mut self.lost => why.unwrap_or_else(|_| "the session was closed".to_string()),
                why = self.starved.wanted() => why,
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_quoted_exactly() {
        assert_eq!(quoted("orders_changed"), "\"orders_changed\"");
        assert_eq!(quoted("a\"b"), "\"a\"\"b\"");
    }
}
