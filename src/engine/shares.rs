//! Namespace shares of a pool: how many of a connection's sessions one namespace's interval
//! polls may hold at once (`--namespace-pool-share`, half by default, at least one, of the
//! sessions the pool's gate lets polls have now). One team's slow queries then never take every
//! session of a connection another team's triggers use: the rest stays free for them, and the
//! team that waits is the one whose queries hold its share, told so by name.
//!
//! Wake polls are not counted here: they have their own budget per connection
//! (`--wake-poll-share`, `engine::wake`), so a namespace's busy channel cannot starve its own
//! interval polls either. A shared poller (identical triggers in several namespaces) counts
//! against the namespace it names in its log lines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::wake::Budget;
use crate::source::Slots;

/// The namespaces' budgets, made on first use and gone when no poll holds or waits for one.
pub struct Shares {
    /// Percent of the pool's sessions; 100 turns the shares off.
    share: u8,
    budgets: Mutex<HashMap<(String, String), Weak<Budget>>>,
}

impl Shares {
    pub fn new(share: u8) -> Arc<Shares> {
        Arc::new(Shares {
            share,
            budgets: Mutex::new(HashMap::new()),
        })
    }

    /// The percent this was made with.
    pub fn share(&self) -> u8 {
        self.share
    }

    /// `namespace`'s budget on `connection`'s pool (behind `slots`); `None` when shares are off.
    pub fn budget(
        &self,
        connection: &str,
        namespace: &str,
        slots: Arc<Slots>,
    ) -> Option<Arc<Budget>> {
        if self.share >= 100 {
            return None;
        }
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (connection.to_string(), namespace.to_string());
        if let Some(budget) = budgets.get(&key).and_then(Weak::upgrade) {
            return Some(budget);
        }
        // Only budgets a poll holds or waits for are alive: the map stays that small.
        budgets.retain(|_, b| b.strong_count() > 0);
        let budget = Budget::share_of(slots, self.share);
        budgets.insert(key, Arc::downgrade(&budget));
        Some(budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_namespace_has_its_share_of_each_pool_and_100_is_off() {
        let slots = Arc::new(Slots::new(4));
        let shares = Shares::new(50);
        let a = shares.budget("db", "team-a", slots.clone()).unwrap();
        assert_eq!(a.limit(), 2);
        let held: Vec<_> = (0..2).map(|_| a.try_take().unwrap()).collect();
        assert!(a.try_take().is_none(), "team-a holds its share");
        let same = shares.budget("db", "team-a", slots.clone()).unwrap();
        assert!(
            same.try_take().is_none(),
            "one budget per namespace and connection"
        );
        let b = shares.budget("db", "team-b", slots.clone()).unwrap();
        assert!(b.try_take().is_some(), "team-b has its own");
        let other_db = shares.budget("other", "team-a", slots.clone()).unwrap();
        assert!(
            other_db.try_take().is_some(),
            "and team-a its own on another connection"
        );
        drop((held, a, same, b, other_db));
        assert!(
            shares
                .budget("db", "team-a", slots.clone())
                .unwrap()
                .try_take()
                .is_some()
        );
        assert_eq!(
            shares.budgets.lock().unwrap().len(),
            1,
            "unused budgets are dropped"
        );
        assert!(
            Shares::new(100)
                .budget("db", "team-a", slots.clone())
                .is_none()
        );
        let one = Arc::new(Slots::new(1));
        assert_eq!(
            Shares::new(50).budget("db", "a", one).unwrap().limit(),
            1,
            "at least one"
        );
    }
}
