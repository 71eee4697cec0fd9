//! The engine's databases: the configured connections' sources, the ones made from
//! per-ScaledObject credentials (adopted when their first poller is created, dropped with their
//! last poller), and the wake-up hubs of both (one per connection, owned here, dropped with the
//! connection).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use super::EngineError;
use super::wake::{Hubs, WakeStatus};
use crate::source::{PoolStatus, Source};

pub struct Sources {
    configured: BTreeMap<String, Arc<dyn Source>>,
    /// Sources made from per-ScaledObject credentials, by their keyed-hash name.
    dynamic: RwLock<HashMap<String, Arc<dyn Source>>>,
    /// One wake-up hub per connection with wake-ups in use.
    hubs: Arc<Hubs>,
}

impl Sources {
    pub fn new(configured: BTreeMap<String, Arc<dyn Source>>, hubs: Hubs) -> Sources {
        Sources {
            configured,
            dynamic: RwLock::new(HashMap::new()),
            hubs: Arc::new(hubs),
        }
    }

    /// The live source of connection `name`, configured or made from credentials.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Source>> {
        self.configured.get(name).cloned().or_else(|| {
            self.dynamic
                .read()
                .expect("sources lock")
                .get(name)
                .cloned()
        })
    }

    /// The source of a connection made from a trigger's own credentials: the live one if any,
    /// else a new one. Building one may read certificate stores and files, so it runs on the
    /// blocking pool and under no lock; [`Sources::adopt`] keeps it when its poller is created.
    pub async fn prepare(
        &self,
        conn: &crate::config::ConnectionConfig,
    ) -> Result<Arc<dyn Source>, EngineError> {
        if let Some(s) = self.get(&conn.name) {
            return Ok(s);
        }
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || crate::source::open(&conn))
            .await
            .map_err(|e| EngineError::Unavailable(format!("opening the connection failed: {e}")))?
            .map_err(|e| EngineError::Unavailable(e.to_string()))
    }

    /// Keeps a source made from metadata credentials while pollers use it, up to `max`. The
    /// registry calls it under its entries lock, under which [`Sources::retain_used`] drops
    /// unused ones: the two cannot race.
    pub fn adopt(
        &self,
        name: &str,
        source: &Arc<dyn Source>,
        max: usize,
    ) -> Result<(), EngineError> {
        let mut dynamic = self.dynamic.write().expect("sources lock");
        if dynamic.len() >= max {
            return Err(EngineError::ResourceExhausted(format!(
                "this server already holds {} connections made from metadata credentials (--max-pollers)",
                dynamic.len()
            )));
        }
        tracing::info!(connection = %name, kind = source.kind(), "connection made from metadata credentials");
        dynamic.insert(name.to_string(), source.clone());
        Ok(())
    }

    /// Drops the sources made from credentials that no poller uses (`in_use`), and their hubs
    /// (their listening sessions close).
    pub fn retain_used(&self, in_use: &HashSet<&str>) {
        let mut dynamic = self.dynamic.write().expect("sources lock");
        dynamic.retain(|name, _| in_use.contains(name.as_str()));
        self.hubs
            .retain(|name| self.configured.contains_key(name) || dynamic.contains_key(name));
    }

    pub fn hubs(&self) -> &Arc<Hubs> {
        &self.hubs
    }

    /// Each configured connection's pool.
    pub fn pools(&self) -> Vec<(String, PoolStatus)> {
        self.configured
            .iter()
            .map(|(name, s)| (name.clone(), s.pool()))
            .collect()
    }

    /// Each connection's wake-ups (connections without any are left out). Connections made
    /// from metadata credentials are summed under their one metric label.
    pub fn wakes(&self) -> Vec<(String, WakeStatus)> {
        let mut out: BTreeMap<String, WakeStatus> = BTreeMap::new();
        for (name, w) in self.hubs.status() {
            let sum = out
                .entry(crate::trigger::connection_label(&name))
                .or_insert(WakeStatus {
                    listening: true,
                    ..Default::default()
                });
            sum.channels += w.channels;
            sum.listening &= w.listening || w.channels == 0;
            sum.notifications += w.notifications;
            sum.reconnects += w.reconnects;
            sum.wake_polls += w.wake_polls;
            sum.deferred += w.deferred;
        }
        for w in out.values_mut() {
            w.listening &= w.channels > 0;
        }
        out.into_iter().collect()
    }

    /// Every source, configured and made from credentials, for closing at shutdown.
    pub fn all(&self) -> Vec<Arc<dyn Source>> {
        let mut out: Vec<Arc<dyn Source>> = self.configured.values().cloned().collect();
        out.extend(self.dynamic.read().expect("sources lock").values().cloned());
        out
    }

    /// Whether no lock of the sources is held now (for tests of lock discipline).
    #[cfg(test)]
    pub(crate) fn unlocked(&self) -> bool {
        self.dynamic.try_write().is_ok()
    }
}
