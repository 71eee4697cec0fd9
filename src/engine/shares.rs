//! Namespace shares of a pool: how many of a connection's sessions one namespace's interval
//! polls may hold at once (`--namespace-pool-share`, half by default, at least one, of the
//! sessions the pool's gate lets polls have now), wherever a connection serves pollers of more
//! than one namespace. One team's slow queries then never take every session of a connection
//! another team's triggers use: the rest stays free for them, and the team that waits is the
//! one whose queries hold its share, told so by name. A connection one namespace uses alone
//! is not limited (the share would only slow that namespace down, protecting nobody).
//!
//! Wake polls are not counted here: they have their own budget per connection
//! (`--wake-poll-share`, `engine::wake`), so a namespace's busy channel cannot starve its own
//! interval polls either. A poller counts under the namespace that created it (identical
//! triggers in several namespaces share one poller).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::wake::Budget;
use crate::source::Slots;

/// The namespaces' budgets, made on first use and gone when no poll holds or waits for one,
/// and the namespaces each connection's live pollers belong to.
pub struct Shares {
    /// Percent of the pool's sessions; 100 turns the shares off.
    share: u8,
    budgets: Mutex<HashMap<(String, String), Weak<Budget>>>,
    /// Live pollers by connection and namespace.
    members: Mutex<HashMap<String, HashMap<String, usize>>>,
}

/// A live poller's membership: its connection and namespace, counted while it lives.
pub struct Member {
    shares: Arc<Shares>,
    connection: String,
    namespace: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut members = lock(&self.shares.members);
        if let Some(spaces) = members.get_mut(&self.connection) {
            if let Some(n) = spaces.get_mut(&self.namespace) {
                *n -= 1;
                if *n == 0 {
                    spaces.remove(&self.namespace);
                }
            }
            if spaces.is_empty() {
                members.remove(&self.connection);
            }
        }
    }
}

impl Member {
    /// The percent its namespace may hold.
    pub fn percent(&self) -> u8 {
        self.shares.share
    }

    /// The budget this poller's interval polls take a slot of, on its connection's pool
    /// (behind `slots`): `None` while shares are off or its connection serves one namespace.
    pub fn budget(&self, slots: Arc<Slots>) -> Option<Arc<Budget>> {
        let shares = &self.shares;
        if shares.share >= 100
            || lock(&shares.members)
                .get(&self.connection)
                .is_none_or(|spaces| spaces.len() < 2)
        {
            return None;
        }
        let mut budgets = lock(&shares.budgets);
        let key = (self.connection.clone(), self.namespace.clone());
        if let Some(budget) = budgets.get(&key).and_then(Weak::upgrade) {
            return Some(budget);
        }
        // Only budgets a poll holds or waits for are alive: the map stays that small.
        budgets.retain(|_, b| b.strong_count() > 0);
        let budget = Budget::share_of(slots, shares.share);
        budgets.insert(key, Arc::downgrade(&budget));
        Some(budget)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shares {
    pub fn new(share: u8) -> Arc<Shares> {
        Arc::new(Shares {
            share,
            budgets: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new poller of `namespace` on `connection` until the returned member is dropped.
    pub fn join(self: &Arc<Self>, connection: &str, namespace: &str) -> Member {
        *lock(&self.members)
            .entry(connection.to_string())
            .or_default()
            .entry(namespace.to_string())
            .or_default() += 1;
        Member {
            shares: self.clone(),
            connection: connection.to_string(),
            namespace: namespace.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_namespace_has_its_share_of_each_shared_pool_and_100_is_off() {
        let slots = Arc::new(Slots::new(4));
        let shares = Shares::new(50);
        let a = shares.join("db", "team-a");
        let a2 = shares.join("db", "team-a");
        assert!(
            a.budget(slots.clone()).is_none(),
            "one namespace alone is not limited"
        );
        let b = shares.join("db", "team-b");
        let budget = a.budget(slots.clone()).unwrap();
        assert_eq!(budget.limit(), 2);
        let held: Vec<_> = (0..2).map(|_| budget.try_take().unwrap()).collect();
        assert!(budget.try_take().is_none(), "team-a holds its share");
        let same = a2.budget(slots.clone()).unwrap();
        assert!(
            same.try_take().is_none(),
            "one budget per namespace and connection"
        );
        assert!(
            b.budget(slots.clone()).unwrap().try_take().is_some(),
            "team-b has its own"
        );
        let other_db = shares.join("other", "team-a");
        assert!(
            other_db.budget(slots.clone()).is_none(),
            "another connection is its own"
        );
        drop((held, budget, same));
        assert!(a.budget(slots.clone()).unwrap().try_take().is_some());
        assert_eq!(lock(&shares.budgets).len(), 1, "unused budgets are dropped");
        drop(b);
        assert!(
            a.budget(slots.clone()).is_none(),
            "team-b's last poller went"
        );
        drop((a, a2, other_db));
        assert!(lock(&shares.members).is_empty());
        let off = Shares::new(100);
        let (x, _y) = (off.join("db", "x"), off.join("db", "y"));
        assert!(x.budget(slots.clone()).is_none());
        let one = Shares::new(50);
        let (x, _y) = (one.join("db", "x"), one.join("db", "y"));
        assert_eq!(
            x.budget(Arc::new(Slots::new(1))).unwrap().limit(),
            1,
            "at least one"
        );
    }
}
