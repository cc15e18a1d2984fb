//! Redis Cluster (`redis-cluster://` URLs): a worker's sharded subscribers,
//! one per master, and where each channel is subscribed.
//!
//! Channels are subscribed with SSUBSCRIBE on the master serving their
//! slot (sharded pub/sub: a message published with SPUBLISH travels only
//! within its shard, instead of to every node as a plain PUBLISH does).
//! Patterns and the module's own channels stay on the worker's main
//! subscriber (plain pub/sub, which a cluster delivers everywhere).
//!
//! The topology comes from `CLUSTER SLOTS`, asked by the worker's main
//! commands connection when it connects, when a shard answers `-MOVED` or
//! drops a subscription (its slot moved), and regularly while something is
//! off (a shard connection down: its master may have failed over).

use std::collections::{HashMap, HashSet};

use sse_core::cluster::{key_slot, Topology};
use sse_core::registry::is_pattern_key;

use ngx::ffi::NGX_LOG_NOTICE;
use ngx::ngx_log_error;

use super::connection::Connection;
use super::{Commands, Link, Peer, Role, Subscriber};
use crate::ngx_ext::cycle_log;

/// Which shard (index into the connections) serves which channel.
#[derive(Default)]
pub struct ClusterMap {
    topology: Option<Topology>,
    /// For each master of the topology, the shard that connects to it
    /// (`None`: a master whose address is no IP, which is not used).
    shard_of_master: Vec<Option<usize>>,
}

impl ClusterMap {
    /// The shard of a channel; `None` for patterns, or before the topology
    /// is known (or while its slot is served by nobody).
    pub fn shard_for(&self, key: &[u8]) -> Option<usize> {
        if is_pattern_key(key) {
            return None;
        }
        let topology = self.topology.as_ref()?;
        let master = topology.owner(key_slot(key))?;
        self.shard_of_master.get(master).copied().flatten()
    }
}

pub struct Shards {
    pub map: ClusterMap,
    /// One subscriber per master; `None` where a master left the topology
    /// (indices travel in the connections' links, so they do not shift).
    pub conns: Vec<Option<Box<Connection<Subscriber>>>>,
    /// With history: one commands connection per master (history reads of
    /// its channels; each master loads the function), same indices.
    pub commands: Vec<Option<Box<Connection<Commands>>>>,
    /// The function library each master loads (history only).
    function: Option<&'static str>,
    peers: Vec<Option<Peer>>,
    auth: Option<Vec<Vec<u8>>>,
    /// Where each channel is subscribed now.
    placement: HashMap<Box<[u8]>, usize>,
    /// Channels a shard answered `-MOVED` for, or dropped: subscribe them
    /// again once the topology is read.
    reroute: HashSet<Box<[u8]>>,
    /// The topology should be read again soon.
    pub stale: bool,
}

impl Shards {
    pub fn new(auth: Option<Vec<Vec<u8>>>, function: Option<&'static str>) -> Self {
        Shards {
            map: ClusterMap::default(),
            conns: Vec::new(),
            commands: Vec::new(),
            function,
            peers: Vec::new(),
            auth,
            placement: HashMap::new(),
            reroute: HashSet::new(),
            stale: true,
        }
    }

    /// Subscribes channels on their shards (those not known yet are
    /// subscribed by their shard's greeting once the topology is in).
    pub fn subscribe(&mut self, keys: &[&[u8]]) {
        for &key in keys {
            let Some(shard) = self.map.shard_for(key) else {
                continue;
            };
            self.placement.insert(key.into(), shard);
            if let Some(conn) = self.conns.get_mut(shard).and_then(Option::as_mut) {
                conn.subscribe(&[key]);
            }
        }
    }

    pub fn unsubscribe(&mut self, keys: &[&[u8]]) {
        for &key in keys {
            self.reroute.remove(key);
            let Some(shard) = self.placement.remove(key) else {
                continue;
            };
            if let Some(conn) = self.conns.get_mut(shard).and_then(Option::as_mut) {
                conn.unsubscribe(&[key]);
            }
        }
    }

    /// A shard sent `key` away: re-read the topology, then subscribe it
    /// where it belongs.
    pub fn moved(&mut self, key: &[u8]) {
        self.reroute.insert(key.into());
        self.stale = true;
    }

    /// Whether every shard connection is up (otherwise a master may have
    /// failed over: keep reading the topology).
    pub fn all_ready(&self) -> bool {
        self.map.topology.is_some()
            && self.conns.iter().flatten().all(|c| c.is_ready())
            && self.commands.iter().flatten().all(|c| c.is_ready())
    }

    /// Sends a barrier on a shard's subscriber (see
    /// [`Connection::barrier`]); false if it is not up.
    pub fn barrier(&mut self, shard: usize, token: u64) -> bool {
        self.conns
            .get_mut(shard)
            .and_then(Option::as_mut)
            .is_some_and(|c| c.barrier(token))
    }

    /// A shard's commands connection.
    pub fn commands_mut(&mut self, shard: usize) -> Option<&mut Connection<Commands>> {
        self.commands
            .get_mut(shard)
            .and_then(Option::as_mut)
            .map(|b| &mut **b)
    }

    /// A new topology: connect to new masters, leave gone ones, and move
    /// the subscriptions of `keys` (the fan-out's channels) that changed
    /// shard. Returns the channels subscribed again elsewhere (their
    /// history streams read what the move may have cost them).
    pub fn apply<'k>(
        &mut self,
        topology: Topology,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Vec<Box<[u8]>> {
        self.stale = !topology.covers_all();
        let unchanged = self.map.topology.as_ref() == Some(&topology);
        if !unchanged {
            let mut shard_of_master = Vec::with_capacity(topology.masters().len());
            let mut wanted = vec![false; self.conns.len()];
            for (ip, port) in topology.masters() {
                let Some(peer) = Peer::from_ip(ip, port.to_string().as_bytes()) else {
                    ngx_log_error!(
                        NGX_LOG_NOTICE,
                        cycle_log(),
                        "sse: redis cluster master \"{}:{port}\" is not an IP address; its channels are served by plain pub/sub only",
                        String::from_utf8_lossy(ip)
                    );
                    shard_of_master.push(None);
                    continue;
                };
                let shard = match self.peers.iter().position(|p| p.as_ref() == Some(&peer)) {
                    Some(i) => i,
                    None => self.open(peer),
                };
                wanted.resize(self.conns.len(), false);
                wanted[shard] = true;
                shard_of_master.push(Some(shard));
            }
            let mut left = Vec::new();
            for (i, keep) in wanted.iter().enumerate() {
                if !keep {
                    if let Some(mut conn) = self.conns[i].take() {
                        conn.close();
                    }
                    if let Some(mut conn) = self.commands[i].take() {
                        conn.close();
                    }
                    if let Some(peer) = self.peers[i].take() {
                        left.push(String::from_utf8_lossy(peer.name()).into_owned());
                    }
                }
            }
            let masters: Vec<String> = topology
                .masters()
                .iter()
                .map(|(ip, port)| format!("{}:{port}", String::from_utf8_lossy(ip)))
                .collect();
            ngx_log_error!(
                NGX_LOG_NOTICE,
                cycle_log(),
                "sse: redis cluster masters: {}{}{}",
                masters.join(", "),
                if topology.covers_all() {
                    ""
                } else {
                    " (some slots unserved)"
                },
                if left.is_empty() {
                    String::new()
                } else {
                    format!("; left {}", left.join(", "))
                }
            );
            self.map = ClusterMap {
                topology: Some(topology),
                shard_of_master,
            };
        }
        // Move what changed shard, and what a shard sent away.
        let mut moved = Vec::new();
        for key in keys {
            let now = self.map.shard_for(key);
            let before = self.placement.get(key).copied();
            if now == before && !self.reroute.contains(key) {
                continue;
            }
            moved.push(Box::<[u8]>::from(key));
            // A shard that sent the key away has dropped it already.
            let dropped = self.reroute.contains(key);
            if let Some(old) = before.filter(|b| Some(*b) != now && !dropped) {
                if let Some(conn) = self.conns.get_mut(old).and_then(Option::as_mut) {
                    conn.unsubscribe(&[key]);
                }
            }
            match now {
                Some(shard) => {
                    self.placement.insert(key.into(), shard);
                    if let Some(conn) = self.conns.get_mut(shard).and_then(Option::as_mut) {
                        conn.subscribe(&[key]);
                    }
                }
                None => {
                    self.placement.remove(key);
                }
            }
        }
        self.reroute.clear();
        moved
    }

    /// A connection to a new master, in a free index; it connects at once.
    fn open(&mut self, peer: Peer) -> usize {
        let index = match self.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.commands.push(None);
                self.peers.push(None);
                self.conns.len() - 1
            }
        };
        if let Some(function) = self.function {
            let link = Link {
                role: Role::Commands,
                shard: index + 1,
            };
            let mut conn = Connection::new(
                vec![peer.clone()],
                self.auth.clone(),
                link,
                Commands::new(Some(function), 0, None),
            );
            conn.start_soon();
            self.commands[index] = Some(conn);
        }
        let link = Link {
            role: Role::Subscriber,
            shard: index + 1,
        };
        let mut conn = Connection::new(
            vec![peer.clone()],
            self.auth.clone(),
            link,
            Subscriber::shard(),
        );
        conn.start_soon();
        self.conns[index] = Some(conn);
        self.peers[index] = Some(peer);
        index
    }

    pub fn close(&mut self) {
        for conn in self.conns.iter_mut().flatten() {
            conn.close();
        }
        for conn in self.commands.iter_mut().flatten() {
            conn.close();
        }
    }
}
