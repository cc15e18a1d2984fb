//! The fan-out registry of one worker: which local subscribers want which
//! subscription.
//!
//! It also decides when the worker's single Redis connection must SUBSCRIBE
//! (first local subscriber) and UNSUBSCRIBE (last one left), so a channel
//! costs Redis one subscription per worker, whatever the number of clients.
//!
//! Subscriptions are keyed by what Redis is asked for: a channel name, or the
//! glob of a pattern (see [`crate::pattern::Pattern::subscription_key`]);
//! keys containing `*` are patterns (PSUBSCRIBE). `K` identifies a subscriber
//! (the nginx shell uses a pointer).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

#[derive(Debug)]
pub struct Registry<K> {
    subscriptions: HashMap<Box<[u8]>, Vec<K>>,
}

impl<K> Default for Registry<K> {
    fn default() -> Self {
        Registry {
            subscriptions: HashMap::new(),
        }
    }
}

/// Whether a registry key is a pattern (subscribed with PSUBSCRIBE).
pub fn is_pattern_key(key: &[u8]) -> bool {
    key.contains(&b'*')
}

impl<K: Copy + Eq + Hash> Registry<K> {
    /// Adds `sub` to every key of `keys` and returns the keys that had no
    /// local subscriber before (to SUBSCRIBE).
    pub fn subscribe<'k>(&mut self, sub: K, keys: &'k [Box<[u8]>]) -> Vec<&'k [u8]> {
        let mut new = Vec::new();
        for key in keys {
            let subscribers = self.subscriptions.entry(key.clone()).or_default();
            if subscribers.is_empty() {
                new.push(&**key);
            }
            if !subscribers.contains(&sub) {
                subscribers.push(sub);
            }
        }
        new
    }

    /// Removes `sub` from every key of `keys` and returns the keys that have
    /// no local subscriber left (to UNSUBSCRIBE).
    pub fn unsubscribe<'k>(&mut self, sub: K, keys: &'k [Box<[u8]>]) -> Vec<&'k [u8]> {
        let mut gone = Vec::new();
        for key in keys {
            let Some(subscribers) = self.subscriptions.get_mut(key) else {
                continue;
            };
            if let Some(i) = subscribers.iter().position(|k| *k == sub) {
                subscribers.swap_remove(i);
            }
            if subscribers.is_empty() {
                self.subscriptions.remove(key);
                gone.push(&**key);
            }
        }
        gone
    }

    /// The local subscribers of `key` (empty if none).
    pub fn subscribers(&self, key: &[u8]) -> &[K] {
        self.subscriptions.get(key).map_or(&[], Vec::as_slice)
    }

    /// Every key with at least one local subscriber (to resubscribe after a
    /// reconnect).
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.subscriptions.keys().map(|k| &**k)
    }

    pub fn key_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Every subscriber, once each (shutdown, revocation).
    pub fn all_subscribers(&self) -> Vec<K> {
        let mut seen = HashSet::new();
        self.subscriptions
            .values()
            .flatten()
            .filter(|k| seen.insert(**k))
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<Box<[u8]>> {
        list.iter().map(|n| n.as_bytes().into()).collect()
    }

    fn strs(list: Vec<&[u8]>) -> Vec<&str> {
        list.into_iter()
            .map(|k| std::str::from_utf8(k).unwrap())
            .collect()
    }

    #[test]
    fn first_subscriber_subscribes_last_one_unsubscribes() {
        let mut reg = Registry::default();
        let ab = keys(&["a", "b"]);
        let bc = keys(&["b", "c"]);
        assert_eq!(strs(reg.subscribe(1, &ab)), ["a", "b"]);
        assert_eq!(strs(reg.subscribe(2, &bc)), ["c"]);
        assert_eq!(reg.subscribers(b"b"), &[1, 2]);
        assert_eq!(reg.key_count(), 3);

        assert_eq!(strs(reg.unsubscribe(1, &ab)), ["a"]);
        assert_eq!(reg.subscribers(b"b"), &[2]);
        assert!(reg.subscribers(b"a").is_empty());
        assert_eq!(strs(reg.unsubscribe(2, &bc)), ["b", "c"]);
        assert_eq!(reg.key_count(), 0);
    }

    #[test]
    fn unknown_subscribers_and_keys_are_harmless() {
        let mut reg = Registry::default();
        let a = keys(&["a"]);
        reg.subscribe(1, &a);
        assert!(reg.unsubscribe(9, &keys(&["zz"])).is_empty());
        assert!(reg.unsubscribe(9, &a).is_empty());
        assert_eq!(reg.subscribers(b"a"), &[1]);
    }

    #[test]
    fn all_subscribers_lists_each_once() {
        let mut reg = Registry::default();
        reg.subscribe(1, &keys(&["a", "b"]));
        reg.subscribe(2, &keys(&["b"]));
        let mut all = reg.all_subscribers();
        all.sort();
        assert_eq!(all, [1, 2]);
        let mut chans: Vec<_> = reg.keys().map(|c| c.to_vec()).collect();
        chans.sort();
        assert_eq!(chans, [b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn pattern_keys() {
        assert!(is_pattern_key(b"dashboards:*"));
        assert!(!is_pattern_key(b"dashboards:7"));
    }
}
