//! Redis Cluster: which node serves a channel. A key (or a sharded pub/sub
//! channel) belongs to one of 16384 hash slots, `CRC16(key) mod 16384`
//! (only the part inside the first non-empty `{...}` counts, so that keys
//! can be kept together); `CLUSTER SLOTS` says which master serves which
//! slots, and a node that does not serve a slot answers `-MOVED`.

use crate::resp::Value;

pub const SLOTS: u16 = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial 0), as Redis Cluster uses it.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of a key or sharded channel.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

/// Which master serves which slots, from `CLUSTER SLOTS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// `(first slot, last slot, index into masters)`, sorted by first slot.
    ranges: Vec<(u16, u16, usize)>,
    /// Each master as `(ip, port)`, in order of first appearance.
    masters: Vec<(Vec<u8>, u16)>,
}

impl Topology {
    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [ip, port, id, ...],
    /// replicas...], ...]`. `None` if it is not one, or covers no slot.
    pub fn parse(value: &Value<'_>) -> Option<Topology> {
        let Value::Array(Some(entries)) = value else {
            return None;
        };
        let mut topology = Topology::default();
        for entry in entries {
            let Value::Array(Some(fields)) = entry else {
                return None;
            };
            let (Some(Value::Integer(start)), Some(Value::Integer(end)), Some(master)) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let Value::Array(Some(node)) = master else {
                return None;
            };
            let ip = node.first()?.as_bytes()?.to_vec();
            let Some(Value::Integer(port)) = node.get(1) else {
                return None;
            };
            let port = u16::try_from(*port).ok()?;
            let (start, end) = (u16::try_from(*start).ok()?, u16::try_from(*end).ok()?);
            if start > end || end >= SLOTS || ip.is_empty() {
                return None;
            }
            let master = (ip, port);
            let index = match topology.masters.iter().position(|m| *m == master) {
                Some(i) => i,
                None => {
                    topology.masters.push(master);
                    topology.masters.len() - 1
                }
            };
            topology.ranges.push((start, end, index));
        }
        topology.ranges.sort_unstable();
        (!topology.ranges.is_empty()).then_some(topology)
    }

    /// The masters, as `(ip, port)`.
    pub fn masters(&self) -> &[(Vec<u8>, u16)] {
        &self.masters
    }

    /// The index (into [`Topology::masters`]) of the master serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        let i = self.ranges.partition_point(|(start, _, _)| *start <= slot);
        let (start, end, master) = *self.ranges.get(i.checked_sub(1)?)?;
        (start..=end).contains(&slot).then_some(master)
    }

    /// Whether every slot is served (a cluster in a stable state).
    pub fn covers_all(&self) -> bool {
        let mut next = 0u32;
        for &(start, end, _) in &self.ranges {
            if start as u32 > next {
                return false;
            }
            next = next.max(end as u32 + 1);
        }
        next == SLOTS as u32
    }
}

/// The slot and new address in a `MOVED <slot> <ip>:<port>` (or `ASK`)
/// error, if it is one.
pub fn redirection(error: &[u8]) -> Option<(u16, &[u8])> {
    let mut words = error.split(|&b| b == b' ');
    let kind = words.next()?;
    if kind != b"MOVED" && kind != b"ASK" {
        return None;
    }
    let slot = std::str::from_utf8(words.next()?).ok()?.parse().ok()?;
    Some((slot, words.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(key_slot(b"logs:w1:f1"), 5696);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"foo"), 12182);
        // Hash tags: the first non-empty {...}.
        assert_eq!(key_slot(b"sse:{logs:w1:f1}:h"), 5696);
        assert_eq!(key_slot(b"{}x"), key_slot(b"{}x"));
        assert_ne!(key_slot(b"{}foo"), key_slot(b"foo"));
        assert_eq!(key_slot(b"a{foo}b{bar}"), key_slot(b"foo"));
        assert_eq!(key_slot(b"{foo"), key_slot(b"{foo"));
    }

    fn slots_reply() -> Vec<u8> {
        let mut out = b"*2\r\n".to_vec();
        for (start, end, port) in [(5461, 10922, 17001), (0, 5460, 17000)] {
            out.extend(
                format!(
                    "*4\r\n:{start}\r\n:{end}\r\n*3\r\n$9\r\n127.0.0.1\r\n:{port}\r\n$2\r\nid\r\n*3\r\n$9\r\n127.0.0.1\r\n:{}\r\n$2\r\nre\r\n",
                    port + 3
                )
                .as_bytes(),
            );
        }
        out
    }

    #[test]
    fn topology_from_cluster_slots() {
        let raw = slots_reply();
        let (value, _) = resp::parse(&raw).unwrap().unwrap();
        let t = Topology::parse(&value).unwrap();
        assert_eq!(
            t.masters(),
            [
                (b"127.0.0.1".to_vec(), 17001),
                (b"127.0.0.1".to_vec(), 17000)
            ]
        );
        assert_eq!(t.owner(0), Some(1));
        assert_eq!(t.owner(5460), Some(1));
        assert_eq!(t.owner(5461), Some(0));
        assert_eq!(t.owner(10922), Some(0));
        assert_eq!(t.owner(10923), None);
        assert!(!t.covers_all());
    }

    #[test]
    fn bad_topologies() {
        for raw in [&b"*0\r\n"[..], b"+OK\r\n", b"*1\r\n*2\r\n:0\r\n:5\r\n"] {
            let (value, _) = resp::parse(raw).unwrap().unwrap();
            assert_eq!(Topology::parse(&value), None, "{raw:?}");
        }
    }

    #[test]
    fn redirections() {
        assert_eq!(
            redirection(b"MOVED 5696 127.0.0.1:17001"),
            Some((5696, &b"127.0.0.1:17001"[..]))
        );
        assert_eq!(redirection(b"ASK 1 10.0.0.1:6379").map(|r| r.0), Some(1));
        assert_eq!(redirection(b"NOPERM no"), None);
        assert_eq!(redirection(b"MOVED x y"), None);
    }
}
