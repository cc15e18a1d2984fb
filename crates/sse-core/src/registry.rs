//! The fan-out registry of one worker: which local subscribers want which
//! channel.
//!
//! It also decides when the worker's single Redis connection must SUBSCRIBE
//! (first local subscriber of a channel) and UNSUBSCRIBE (last one left), so a
//! channel costs Redis one subscription per worker, whatever the number of
//! clients. `K` identifies a subscriber (the nginx shell uses a pointer).

use std::collections::HashMap;

use crate::channel::ChannelName;

#[derive(Debug)]
pub struct Registry<K> {
    channels: HashMap<Box<[u8]>, Vec<K>>,
}

impl<K> Default for Registry<K> {
    fn default() -> Self {
        Registry {
            channels: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq> Registry<K> {
    /// Adds `key` to every channel of `channels` and returns the channels that
    /// had no local subscriber before (to SUBSCRIBE).
    pub fn subscribe<'c>(&mut self, key: K, channels: &'c [ChannelName]) -> Vec<&'c ChannelName> {
        let mut new = Vec::new();
        for channel in channels {
            let subscribers = self.channels.entry(channel.as_bytes().into()).or_default();
            if subscribers.is_empty() {
                new.push(channel);
            }
            if !subscribers.contains(&key) {
                subscribers.push(key);
            }
        }
        new
    }

    /// Removes `key` from every channel of `channels` and returns the channels
    /// that have no local subscriber left (to UNSUBSCRIBE).
    pub fn unsubscribe<'c>(&mut self, key: K, channels: &'c [ChannelName]) -> Vec<&'c ChannelName> {
        let mut gone = Vec::new();
        for channel in channels {
            let Some(subscribers) = self.channels.get_mut(channel.as_bytes()) else {
                continue;
            };
            if let Some(i) = subscribers.iter().position(|k| *k == key) {
                subscribers.swap_remove(i);
            }
            if subscribers.is_empty() {
                self.channels.remove(channel.as_bytes());
                gone.push(channel);
            }
        }
        gone
    }

    /// The local subscribers of `channel` (empty if none).
    pub fn subscribers(&self, channel: &[u8]) -> &[K] {
        self.channels.get(channel).map_or(&[], Vec::as_slice)
    }

    /// Every channel with at least one local subscriber (to resubscribe after
    /// a reconnect).
    pub fn channels(&self) -> impl Iterator<Item = &[u8]> {
        self.channels.keys().map(|k| &**k)
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Every subscriber, once each (to end all streams at shutdown).
    pub fn all_subscribers(&self) -> Vec<K> {
        let mut all: Vec<K> = Vec::new();
        for subscribers in self.channels.values() {
            for key in subscribers {
                if !all.contains(key) {
                    all.push(*key);
                }
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<ChannelName> {
        list.iter()
            .map(|n| ChannelName::parse(n.as_bytes()).unwrap())
            .collect()
    }

    fn strs(list: Vec<&ChannelName>) -> Vec<&str> {
        list.into_iter().map(ChannelName::as_str).collect()
    }

    #[test]
    fn first_subscriber_subscribes_last_one_unsubscribes() {
        let mut reg = Registry::default();
        let ab = names(&["a", "b"]);
        let bc = names(&["b", "c"]);
        assert_eq!(strs(reg.subscribe(1, &ab)), ["a", "b"]);
        assert_eq!(strs(reg.subscribe(2, &bc)), ["c"]);
        assert_eq!(reg.subscribers(b"b"), &[1, 2]);
        assert_eq!(reg.channel_count(), 3);

        assert_eq!(strs(reg.unsubscribe(1, &ab)), ["a"]);
        assert_eq!(reg.subscribers(b"b"), &[2]);
        assert!(reg.subscribers(b"a").is_empty());
        assert_eq!(strs(reg.unsubscribe(2, &bc)), ["b", "c"]);
        assert_eq!(reg.channel_count(), 0);
    }

    #[test]
    fn unknown_keys_and_channels_are_harmless() {
        let mut reg = Registry::default();
        let a = names(&["a"]);
        reg.subscribe(1, &a);
        assert!(reg.unsubscribe(9, &names(&["zz"])).is_empty());
        assert!(reg.unsubscribe(9, &a).is_empty());
        assert_eq!(reg.subscribers(b"a"), &[1]);
    }

    #[test]
    fn all_subscribers_lists_each_once() {
        let mut reg = Registry::default();
        reg.subscribe(1, &names(&["a", "b"]));
        reg.subscribe(2, &names(&["b"]));
        let mut all = reg.all_subscribers();
        all.sort();
        assert_eq!(all, [1, 2]);
        let mut chans: Vec<_> = reg.channels().map(|c| c.to_vec()).collect();
        chans.sort();
        assert_eq!(chans, [b"a".to_vec(), b"b".to_vec()]);
    }
}
