//! Event ids of Redis Cluster history: one position per channel.
//!
//! In a cluster a channel's history lives on the node that serves its slot,
//! with its own sequence (a global sequence would need one key for every
//! slot). A stream that multiplexes channels living on different nodes
//! therefore has no single number for "where I am"; its SSE id carries one
//! number per channel instead, so that the one `Last-Event-ID` a browser
//! keeps still resumes every channel exactly:
//!
//! ```text
//! v<checksum>.<n1>.<n2>...   e.g. v3b9e0c1a.17.0.4211
//! ```
//!
//! `n1, n2, ...` are the positions of the stream's channels (patterns have
//! no history) sorted by name, `-` for a channel whose position is not
//! known yet (it was just added and its history is still being read: a
//! resume from there starts the channel as a new stream would, where a `0`
//! would replay its whole history), and `checksum` (8 hex digits, FNV-1a of the
//! sorted names) says which channels those are: an id from another channel
//! set is not read against this one (the stream then treats it as unknown
//! and reports a gap, as for any id it did not issue). Size: 9 characters
//! plus one dot and the digits of each position: with positions below
//! 100,000, 15 characters for 1 channel, 57 for 8, 201 for 32.

/// Whether an id is a position vector (not a plain sequence number).
pub fn is_vector(raw: &[u8]) -> bool {
    raw.first() == Some(&b'v')
}

/// FNV-1a (32 bits) of the names, separated by commas.
fn checksum<N: AsRef<[u8]>>(sorted: &[N]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for (i, name) in sorted.iter().enumerate() {
        if i > 0 {
            hash ^= b',' as u32;
            hash = hash.wrapping_mul(0x0100_0193);
        }
        for &b in name.as_ref() {
            hash ^= b as u32;
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

/// The id of a stream whose channels (sorted by name) are at `positions`
/// (`None`: not known yet).
pub fn encode<N: AsRef<[u8]>>(sorted: &[N], positions: &[Option<u64>]) -> String {
    use std::fmt::Write;
    let mut out = format!("v{:08x}", checksum(sorted));
    for p in positions {
        let _ = match p {
            Some(p) => write!(out, ".{p}"),
            None => write!(out, ".-"),
        };
    }
    out
}

/// The positions an id gives for these channels (sorted by name; `None`
/// where it says `-`); `None` if it is not a vector of exactly these
/// channels.
pub fn decode<N: AsRef<[u8]>>(raw: &[u8], sorted: &[N]) -> Option<Vec<Option<u64>>> {
    let rest = raw.strip_prefix(b"v")?;
    let mut parts = rest.split(|&b| b == b'.');
    let sum = parts.next()?;
    if sum.len() != 8 || !sum.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let sum = u32::from_str_radix(std::str::from_utf8(sum).ok()?, 16).ok()?;
    if sum != checksum(sorted) {
        return None;
    }
    let positions: Vec<Option<u64>> = parts
        .map(|p| match p {
            b"-" => Some(None),
            p => crate::envelope::parse_id(p).map(Some),
        })
        .collect::<Option<_>>()?;
    (positions.len() == sorted.len()).then_some(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sizes() {
        let one = ["logs:w1:f1"];
        let id = encode(&one, &[Some(17)]);
        assert!(is_vector(id.as_bytes()));
        assert_eq!(decode(id.as_bytes(), &one), Some(vec![Some(17)]));
        let eight: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
        let big = vec![Some(99_999u64); 32];
        let thirty_two: Vec<String> = (0..32).map(|i| format!("c{i:02}")).collect();
        assert_eq!(encode(&one, &[Some(99_999)]).len(), 15);
        assert_eq!(encode(&eight, &big[..8]).len(), 57);
        assert_eq!(encode(&thirty_two, &big).len(), 201);
        let some: Vec<Option<u64>> = [1, 2, 3, 4, 5, 6, 7, 0].map(Some).to_vec();
        assert_eq!(decode(encode(&eight, &some).as_bytes(), &eight), Some(some));
    }

    #[test]
    fn unknown_positions_are_not_zero() {
        let abc = ["a", "b", "c"];
        let id = encode(&abc, &[Some(4), None, Some(0)]);
        assert!(id.ends_with(".4.-.0"), "{id}");
        assert_eq!(
            decode(id.as_bytes(), &abc),
            Some(vec![Some(4), None, Some(0)])
        );
        // Only a lone "-" means unknown.
        for junk in [".4.--.0", ".4.-1.0", ".4..0"] {
            let raw = format!("{}{junk}", &id[..9]);
            assert_eq!(decode(raw.as_bytes(), &abc), None, "{raw}");
        }
    }

    #[test]
    fn other_channel_sets_and_junk_are_refused() {
        let ab = ["a", "b"];
        let id = encode(&ab, &[Some(1), Some(2)]);
        assert_eq!(decode(id.as_bytes(), &["a", "c"]), None);
        assert_eq!(decode(id.as_bytes(), &["a"]), None);
        // "a,b" must not read as "a", "b" joined otherwise.
        assert_eq!(decode(encode(&["a,b"], &[Some(1)]).as_bytes(), &ab), None);
        for junk in [
            "",
            "17",
            "v",
            "vzzzzzzzz.1",
            "v0000000.1",
            &format!("{id}.x"),
            &format!("{id}."),
        ] {
            assert_eq!(decode(junk.as_bytes(), &ab), None, "{junk}");
        }
        assert!(!is_vector(b"17"));
    }
}
