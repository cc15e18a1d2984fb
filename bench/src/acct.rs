//! Self-describing payloads, per-subscriber delivery accounting and the
//! latency histogram.

use std::fmt::Write as _;

/// What every published message carries, in its first bytes:
/// `c=<channel index> s=<sequence> t=<CLOCK_MONOTONIC ns at send> r=<run id> `
/// and then `x` padding up to the requested size. Sequence 0 is a warm-up
/// message, never counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub chan: u32,
    pub seq: u64,
    pub t_ns: u64,
    pub run: u32,
}

pub fn encode(buf: &mut Vec<u8>, s: Stamp, size: usize) {
    buf.clear();
    let mut head = String::with_capacity(64);
    let _ = write!(head, "c={} s={} t={} r={} ", s.chan, s.seq, s.t_ns, s.run);
    buf.extend_from_slice(head.as_bytes());
    if buf.len() < size {
        buf.resize(size, b'x');
    }
}

pub fn decode(data: &[u8]) -> Option<Stamp> {
    let mut it = data.split(|&b| b == b' ');
    let mut field = |name: u8| -> Option<u64> {
        let f = it.next()?;
        if f.len() < 3 || f[0] != name || f[1] != b'=' {
            return None;
        }
        let mut v: u64 = 0;
        for &d in &f[2..] {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
        }
        Some(v)
    };
    let chan = field(b'c')?;
    let seq = field(b's')?;
    let t_ns = field(b't')?;
    let run = field(b'r')?;
    Some(Stamp {
        chan: u32::try_from(chan).ok()?,
        seq,
        t_ns,
        run: u32::try_from(run).ok()?,
    })
}

/// What one subscriber saw of its channel's sequence.
#[derive(Debug, Clone, Default)]
pub struct SubAcct {
    pub chan: u32,
    /// Bit `s` set: sequence `s` arrived at least once.
    seen: Vec<u64>,
    max_seq: u64,
    /// Every counted delivery, duplicates included.
    pub received: u64,
    pub duplicated: u64,
    /// Arrived after a higher sequence of the same channel.
    pub out_of_order: u64,
    /// Carried another channel's index.
    pub misrouted: u64,
    /// A warm-up message (sequence 0) arrived.
    pub warm: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    New,
    InOrder,
    Duplicate,
    OutOfOrder,
    Misrouted,
}

impl SubAcct {
    pub fn new(chan: u32) -> Self {
        SubAcct {
            chan,
            ..Default::default()
        }
    }

    /// Counts one delivery of `seq` (> 0) on channel `chan`.
    pub fn record(&mut self, chan: u32, seq: u64) -> Outcome {
        if chan != self.chan {
            self.misrouted += 1;
            return Outcome::Misrouted;
        }
        self.received += 1;
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= w {
            self.seen.resize(w + 1, 0);
        }
        if self.seen[w] & (1 << b) != 0 {
            self.duplicated += 1;
            return Outcome::Duplicate;
        }
        self.seen[w] |= 1 << b;
        if seq < self.max_seq {
            self.out_of_order += 1;
            Outcome::OutOfOrder
        } else {
            self.max_seq = seq;
            if seq == 1 || self.has(seq - 1) {
                Outcome::InOrder
            } else {
                Outcome::New
            }
        }
    }

    fn has(&self, seq: u64) -> bool {
        let w = (seq / 64) as usize;
        w < self.seen.len() && self.seen[w] & (1 << (seq % 64)) != 0
    }

    /// Distinct sequences received in `1..=last`.
    pub fn distinct_upto(&self, last: u64) -> u64 {
        (1..=last).filter(|&s| self.has(s)).count() as u64
    }

    #[cfg(test)]
    pub fn distinct(&self) -> u64 {
        self.received - self.duplicated
    }

    /// Sequences `1..=last` (the last the publisher sent on this channel)
    /// that never arrived.
    pub fn missing(&self, last: u64) -> u64 {
        last - self.distinct_upto(last)
    }
}

/// Totals over all subscribers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub received: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub misrouted: u64,
    /// Deliveries the publisher's sequences call for.
    pub expected: u64,
}

/// `last_seq[c]`: the last sequence published on channel `c`.
pub fn totals(subs: &[SubAcct], last_seq: &[u64]) -> Totals {
    let mut t = Totals::default();
    for s in subs {
        let last = last_seq.get(s.chan as usize).copied().unwrap_or(0);
        t.received += s.received;
        t.duplicated += s.duplicated;
        t.out_of_order += s.out_of_order;
        t.misrouted += s.misrouted;
        t.missing += s.missing(last);
        t.expected += last;
    }
    t
}

/// The (channel, sequence) pairs that some subscriber never got, with how
/// many subscribers missed each; at most `limit` pairs, lowest first.
pub fn missing_pairs(subs: &[SubAcct], last_seq: &[u64], limit: usize) -> Vec<(u32, u64, u64)> {
    let mut m = std::collections::BTreeMap::new();
    for s in subs {
        let last = last_seq.get(s.chan as usize).copied().unwrap_or(0);
        for q in 1..=last {
            if !s.has(q) {
                *m.entry((s.chan, q)).or_insert(0u64) += 1;
            }
        }
    }
    m.into_iter()
        .take(limit)
        .map(|((c, q), n)| (c, q, n))
        .collect()
}

/// A log-linear histogram of nanosecond values: 2^SUB_BITS buckets per
/// power of two, so a reported percentile is within 1/2^SUB_BITS (0.8%).
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    pub count: u64,
    pub sum: u128,
    pub min: u64,
    pub max: u64,
}

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; ((64 - SUB_BITS as usize) + 1) * SUB as usize],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    let mant = (v >> shift) - SUB; // 0..SUB
    (SUB + (shift as u64) * SUB + mant) as usize
}

/// The smallest and largest value of a bucket.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let shift = (i - SUB) / SUB;
    let mant = (i - SUB) % SUB;
    let lo = (SUB + mant) << shift;
    (lo, lo + (1u64 << shift) - 1)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket, clamped
    /// to the exact min and max.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == self.count {
            return self.max;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                return (lo + (hi - lo) / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrip_and_padding() {
        let mut b = Vec::new();
        let s = Stamp {
            chan: 17,
            seq: 12345,
            t_ns: 987654321012,
            run: 4242,
        };
        encode(&mut b, s, 128);
        assert_eq!(b.len(), 128);
        assert!(b.starts_with(b"c=17 s=12345 t=987654321012 r=4242 xx"));
        assert_eq!(decode(&b), Some(s));
        encode(&mut b, s, 4);
        assert_eq!(decode(&b), Some(s), "no padding when the header is longer");
        assert_eq!(decode(b"c=1 s=2 t=3"), None);
        assert_eq!(decode(b"c=1 s=x t=3 r=1 "), None);
        assert_eq!(decode(b"hello"), None);
    }

    #[test]
    fn in_order_stream_has_nothing_to_report() {
        let mut a = SubAcct::new(3);
        for s in 1..=200 {
            assert_eq!(a.record(3, s), Outcome::InOrder);
        }
        assert_eq!(
            (a.received, a.duplicated, a.out_of_order, a.missing(200)),
            (200, 0, 0, 0)
        );
    }

    #[test]
    fn gap_duplicate_reorder_and_tail_loss() {
        let mut a = SubAcct::new(0);
        // 1 2 4 3 5 5 7 (6 lost) 8 ... publisher went up to 10 (9, 10 lost)
        for s in [1, 2, 4, 3, 5, 5, 7, 8] {
            a.record(0, s);
        }
        assert_eq!(a.received, 8);
        assert_eq!(a.duplicated, 1);
        assert_eq!(a.out_of_order, 1, "3 after 4");
        assert_eq!(a.missing(10), 3, "6, 9 and 10");
        assert_eq!(a.distinct(), 7);
        // A late duplicate of an out-of-order sequence is a duplicate only.
        assert_eq!(a.record(0, 3), Outcome::Duplicate);
        assert_eq!(a.out_of_order, 1);
        assert_eq!(a.record(1, 6), Outcome::Misrouted);
        assert_eq!((a.misrouted, a.received), (1, 9));
    }

    #[test]
    fn totals_sum_over_subscribers() {
        let mut subs = vec![SubAcct::new(0), SubAcct::new(0), SubAcct::new(1)];
        for s in 1..=5 {
            subs[0].record(0, s);
        }
        for s in [1, 2, 2, 5] {
            subs[1].record(0, s);
        }
        for s in [2, 1] {
            subs[2].record(1, s);
        }
        let t = totals(&subs, &[5, 3]);
        assert_eq!(
            t,
            Totals {
                received: 11,
                missing: 2 + 1,
                duplicated: 1,
                out_of_order: 1,
                misrouted: 0,
                expected: 13
            }
        );
    }

    #[test]
    fn histogram_buckets_are_exact_below_sub_and_tight_above() {
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            123_456_789,
            u64::MAX / 2,
        ] {
            let (lo, hi) = bucket_range(bucket(v));
            assert!(lo <= v && v <= hi, "{v} in [{lo},{hi}]");
            assert!((hi - lo) as f64 <= v as f64 / SUB as f64 + 1.0);
        }
        // consecutive buckets tile the line
        for i in 0..2000 {
            assert_eq!(bucket_range(i).1 + 1, bucket_range(i + 1).0);
        }
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        for v in 1..=100u64 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.max, 100);
        let mut h = Histogram::default();
        for _ in 0..999 {
            h.record(1_000_000);
        }
        h.record(50_000_000);
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 1e6).abs() / 1e6 < 0.01);
        assert!((h.quantile(0.999) as f64 - 1e6).abs() / 1e6 < 0.01);
        assert_eq!(h.quantile(1.0), 50_000_000);
        assert_eq!(h.max, 50_000_000);
    }
}
