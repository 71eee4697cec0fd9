//! PostgreSQL wake-ups: LISTEN/NOTIFY on one dedicated session per connection (never a pooled
//! one: its LISTEN state would leak into other polls). The hub in `source::wake` decides what
//! to listen on and when to reconnect; this is only the session.

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_postgres::Client;

use super::{Sessions, describe};
use crate::source::SourceError;
use crate::source::wake::{Deliver, ListenSession, Listener};

/// LISTEN/UNLISTEN/ping may not run longer on the server than this.
const STATEMENT_TIMEOUT_MS: u64 = 10_000;

pub(super) struct PgListener {
    pub(super) sessions: Sessions,
    /// The connection's config with the listener's application_name.
    pub(super) config: tokio_postgres::Config,
}

struct PgSession {
    client: Client,
    lost: tokio::sync::oneshot::Receiver<String>,
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
            let (tx, lost) = tokio::sync::oneshot::channel();
            let client = self
                .sessions
                .open(self.config.clone(), Some((deliver, tx)))
                .await?;
            client
                .batch_execute(&format!("SET statement_timeout = {STATEMENT_TIMEOUT_MS}"))
                .await
                .map_err(failed)?;
            Ok(Box::new(PgSession { client, lost }) as Box<dyn ListenSession>)
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
            (&mut self.lost)
                .await
                .unwrap_or_else(|_| "the session was closed".to_string())
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
