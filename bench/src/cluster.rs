//! A local Redis Cluster for the fanout-cluster workload: masters on
//! loopback (no replicas), the 16384 hash slots split evenly between them,
//! and which master serves a channel.
//!
//! The cluster is built with plain commands, as `redis-cli --cluster
//! create` does it: each node gets a distinct config epoch and its slot
//! range (`CLUSTER ADDSLOTS`), the first node `CLUSTER MEET`s the others,
//! and the cluster is ready when every node says `cluster_state:ok` and
//! knows all the others.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use sse_core::cluster::{key_slot, SLOTS};

use crate::publish::redis_cmd;
use crate::server::{free_port, Redis};

/// `n` contiguous slot ranges `(first, last)` covering 0..=16383, sizes
/// differing by at most one.
pub fn slot_ranges(n: usize) -> Vec<(u16, u16)> {
    let n = n.max(1) as u32;
    let total = SLOTS as u32;
    (0..n)
        .map(|i| ((total * i / n) as u16, (total * (i + 1) / n - 1) as u16))
        .collect()
}

/// The range (master) serving `slot`.
pub fn owner(ranges: &[(u16, u16)], slot: u16) -> Option<usize> {
    ranges
        .iter()
        .position(|&(first, last)| (first..=last).contains(&slot))
}

/// For each channel, the master serving its hash slot (CRC16 mod 16384 of
/// the name, or of its first non-empty `{...}`).
pub fn route(names: &[String], ranges: &[(u16, u16)]) -> Vec<usize> {
    names
        .iter()
        .map(|n| owner(ranges, key_slot(n.as_bytes())).unwrap_or(0))
        .collect()
}

/// How many channels each of `masters` serves.
pub fn per_master(route: &[usize], masters: usize) -> Vec<usize> {
    let mut v = vec![0; masters];
    for &m in route {
        if let Some(n) = v.get_mut(m) {
            *n += 1;
        }
    }
    v
}

/// A field of an `INFO` or `CLUSTER INFO` reply (`key:value` lines).
pub fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

/// Whether a node's `CLUSTER INFO` says it is part of a healthy cluster of
/// `masters` nodes serving every slot.
pub fn cluster_ready(info: &str, masters: usize) -> bool {
    info_field(info, "cluster_state") == Some("ok")
        && info_field(info, "cluster_slots_ok") == Some(&SLOTS.to_string())
        && info_field(info, "cluster_known_nodes") == Some(&masters.to_string())
}

pub struct RedisCluster {
    /// The masters, node i serving `ranges[i]`.
    pub nodes: Vec<Redis>,
    /// Their cluster bus ports.
    bus_ports: Vec<u16>,
    pub ranges: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled redis-servers in `dir/node<i>` and
    /// joins them into one cluster.
    pub fn start(bin: &str, dir: &Path, masters: usize) -> io::Result<RedisCluster> {
        let (mut nodes, mut bus_ports) = (Vec::new(), Vec::new());
        for i in 0..masters {
            let node_dir = dir.join(format!("node{i}"));
            fs::create_dir_all(&node_dir)?;
            // The bus port is chosen too: port + 10000 may be above 65535.
            let bus = free_port()?;
            let bus_arg = bus.to_string();
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                bus_arg.as_str(),
            ];
            nodes.push(Redis::start_with(bin, &node_dir, &extra)?);
            bus_ports.push(bus);
        }
        let cluster = RedisCluster {
            ranges: slot_ranges(masters),
            nodes,
            bus_ports,
        };
        cluster.create()?;
        Ok(cluster)
    }

    fn create(&self) -> io::Result<()> {
        for (i, (node, &(first, last))) in self.nodes.iter().zip(&self.ranges).enumerate() {
            // Distinct epochs, so the nodes have no collision to resolve.
            let epoch = (i + 1).to_string();
            redis_cmd(node.port, &["CLUSTER", "SET-CONFIG-EPOCH", &epoch])?;
            let slots: Vec<String> = (first..=last).map(|s| s.to_string()).collect();
            let mut args = vec!["CLUSTER", "ADDSLOTS"];
            args.extend(slots.iter().map(String::as_str));
            redis_cmd(node.port, &args)?;
        }
        let first = self.nodes[0].port;
        for (node, bus) in self.nodes.iter().zip(&self.bus_ports).skip(1) {
            let (port, bus) = (node.port.to_string(), bus.to_string());
            redis_cmd(first, &["CLUSTER", "MEET", "127.0.0.1", &port, &bus])?;
        }
        let t0 = Instant::now();
        let masters = self.nodes.len();
        while !self.nodes.iter().all(|n| {
            redis_cmd(n.port, &["CLUSTER", "INFO"]).is_ok_and(|i| cluster_ready(&i, masters))
        }) {
            if t0.elapsed() > Duration::from_secs(30) || crate::stopping() {
                let states: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        let info = redis_cmd(n.port, &["CLUSTER", "INFO"]).unwrap_or_default();
                        format!(
                            "{}: {}",
                            n.port,
                            info_field(&info, "cluster_state").unwrap_or("?")
                        )
                    })
                    .collect();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("Redis Cluster not ready after 30 s ({})", states.join(", ")),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The `sse_redis_url` of the cluster: every master as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    /// Checks this tool's slot computation against the cluster's own
    /// (`CLUSTER KEYSLOT`) for each channel; the first difference is an error.
    pub fn check_slots(&self, names: &[String]) -> io::Result<()> {
        for n in names {
            let theirs = redis_cmd(self.nodes[0].port, &["CLUSTER", "KEYSLOT", n])?;
            let ours = key_slot(n.as_bytes());
            if theirs.trim() != ours.to_string() {
                return Err(io::Error::other(format!(
                    "slot of {n}: CLUSTER KEYSLOT says {}, CRC16 gives {ours}",
                    theirs.trim()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_slot_once() {
        for n in 1..=7 {
            let r = slot_ranges(n);
            assert_eq!(r.len(), n);
            assert_eq!(r[0].0, 0);
            assert_eq!(r[n - 1].1, SLOTS - 1);
            for w in r.windows(2) {
                assert_eq!(w[0].1 + 1, w[1].0, "{r:?}");
            }
            let sizes: Vec<u16> = r.iter().map(|(a, b)| b - a + 1).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "{sizes:?}");
        }
        assert_eq!(slot_ranges(3), [(0, 5460), (5461, 10921), (10922, 16383)]);
    }

    #[test]
    fn channels_are_routed_by_slot() {
        let r = slot_ranges(3);
        assert_eq!(owner(&r, 0), Some(0));
        assert_eq!(owner(&r, 5461), Some(1));
        assert_eq!(owner(&r, 16383), Some(2));
        assert_eq!(owner(&[(0, 10)], 11), None);
        // Slots as CLUSTER KEYSLOT gives them on Redis 7.0: "foo" 12182,
        // "logs:w1:f1" 5696, "123456789" 12739; a hash tag decides alone.
        let names: Vec<String> = ["foo", "logs:w1:f1", "123456789", "x{logs:w1:f1}y", "bar"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let route = route(&names, &r);
        assert_eq!(&route[..4], [2, 1, 2, 1]);
        assert_eq!(route[4], owner(&r, key_slot(b"bar")).unwrap());
        assert_eq!(per_master(&route, 3).iter().sum::<usize>(), 5);
        assert_eq!(per_master(&[0, 2, 2, 7], 3), [1, 0, 2]);
    }

    #[test]
    fn cluster_info_fields() {
        let info = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\n\
                    cluster_known_nodes:3\r\ncluster_size:3\r\n";
        assert_eq!(info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(info_field(info, "cluster_size"), Some("3"));
        assert_eq!(info_field(info, "cluster_slots"), None);
        assert!(cluster_ready(info, 3));
        assert!(!cluster_ready(info, 4));
        assert!(!cluster_ready(&info.replace("state:ok", "state:fail"), 3));
        assert!(!cluster_ready(&info.replace("ok:16384", "ok:16383"), 3));
    }
}
