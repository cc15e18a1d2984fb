//! Channel patterns: what a client may read (grants) and, where a location
//! allows it, what it subscribes to.
//!
//! A pattern is a channel name in which whole segments may be wildcards:
//! - `*` matches exactly one segment: `logs:w1:*` matches `logs:w1:f1`, not
//!   `logs:w1:f1:x`, not `logs:w10:f1`, not `logs:w1`;
//! - `**`, only as the last segment, matches one or more segments:
//!   `logs:w1:**` matches `logs:w1:f1` and `logs:w1:f1:x`, not `logs:w1`.
//!
//! Wildcards inside a segment (`dash*`) are invalid, as is anything that is
//! not a valid channel name once the wildcards are taken out. Matching is
//! exact, byte for byte: no case folding, no decoding, so look-alikes and
//! encoded separators never match by accident.

use std::fmt;

use crate::channel::{ChannelError, ChannelName, MAX_CHANNEL_LEN};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    Literal(Box<str>),
    /// `*`
    One,
    /// `**` (last segment only)
    Rest,
}

/// A channel name or a channel pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Box<str>,
    segments: Vec<Segment>,
}

impl Pattern {
    pub fn parse(raw: &[u8]) -> Result<Self, ChannelError> {
        if raw.is_empty() {
            return Err(ChannelError::Empty);
        }
        if raw.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong { len: raw.len() });
        }
        let shown = || String::from_utf8_lossy(raw).into_owned();
        let parts: Vec<&[u8]> = raw.split(|&b| b == b':').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                b"*" => Segment::One,
                b"**" if i + 1 == parts.len() => Segment::Rest,
                b"**" => return Err(ChannelError::MisplacedWildcard { name: shown() }),
                literal => {
                    if literal.contains(&b'*') {
                        return Err(ChannelError::MisplacedWildcard { name: shown() });
                    }
                    // Reuse the channel rules for the literal segment.
                    let name = ChannelName::parse(literal).map_err(|e| match e {
                        ChannelError::Empty | ChannelError::EmptySegment { .. } => {
                            ChannelError::EmptySegment { name: shown() }
                        }
                        ChannelError::InvalidByte { byte, .. } => ChannelError::InvalidByte {
                            name: shown(),
                            byte,
                        },
                        other => other,
                    })?;
                    Segment::Literal(name.as_str().into())
                }
            };
            segments.push(segment);
        }
        let text = std::str::from_utf8(raw).map_err(|_| ChannelError::Empty)?;
        Ok(Pattern {
            text: text.into(),
            segments,
        })
    }

    /// A pattern without wildcards is a plain channel.
    pub fn is_concrete(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    /// Whether `channel` (as published, any bytes) is matched. A channel that
    /// is not a valid name is never matched.
    pub fn matches(&self, channel: &[u8]) -> bool {
        if ChannelName::parse(channel).is_err() {
            return false;
        }
        let mut parts = channel.split(|&b| b == b':');
        for segment in &self.segments {
            match segment {
                Segment::Literal(lit) => {
                    if parts.next() != Some(lit.as_bytes()) {
                        return false;
                    }
                }
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Rest => return parts.next().is_some(),
            }
        }
        parts.next().is_none()
    }

    /// Whether some channel is matched by both patterns.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        fn go(a: &[Segment], b: &[Segment]) -> bool {
            match (a.first(), b.first()) {
                (None, None) => true,
                // `**` takes one or more segments: any non-empty rest of the
                // other side can be matched by some channel.
                (Some(Segment::Rest), _) => !b.is_empty(),
                (_, Some(Segment::Rest)) => !a.is_empty(),
                (None, _) | (_, None) => false,
                (Some(x), Some(y)) => {
                    let compatible = match (x, y) {
                        (Segment::Literal(p), Segment::Literal(q)) => p == q,
                        _ => true,
                    };
                    compatible && go(&a[1..], &b[1..])
                }
            }
        }
        go(&self.segments, &other.segments)
    }

    /// The Redis PSUBSCRIBE glob for this pattern. Redis' `*` also crosses
    /// `:`, so it matches a superset; every message is then checked with
    /// [`Pattern::matches`]. Our names hold no glob metacharacters.
    pub fn redis_glob(&self) -> String {
        let parts: Vec<&str> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => &**l,
                Segment::One | Segment::Rest => "*",
            })
            .collect();
        parts.join(":")
    }
}

impl Pattern {
    /// What the worker asks Redis for: the channel itself, or for a pattern
    /// its glob. Patterns that differ only in a final `*` / `**` share a key
    /// (and one PSUBSCRIBE); each subscriber filters with its own pattern.
    pub fn subscription_key(&self) -> Box<[u8]> {
        if self.is_concrete() {
            self.as_bytes().into()
        } else {
            self.redis_glob().into_bytes().into()
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What one user may read, as fixed when the stream opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    patterns: Vec<Pattern>,
}

impl Grants {
    /// Parses grant lists (patterns separated by commas and/or spaces, as an
    /// auth service puts them in a header). Invalid entries grant nothing and
    /// are returned so that the caller can log them.
    pub fn parse<V: AsRef<[u8]>>(values: &[V]) -> (Grants, Vec<String>) {
        let mut grants = Grants::default();
        let mut invalid = Vec::new();
        for value in values {
            for item in value
                .as_ref()
                .split(|&b| b == b',' || b.is_ascii_whitespace())
                .filter(|item| !item.is_empty())
            {
                match Pattern::parse(item) {
                    Ok(p) if !grants.patterns.contains(&p) => grants.patterns.push(p),
                    Ok(_) => {}
                    Err(_) => invalid.push(String::from_utf8_lossy(item).into_owned()),
                }
            }
        }
        (grants, invalid)
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether a message on `channel` may be delivered.
    pub fn allows(&self, channel: &[u8]) -> bool {
        self.patterns.iter().any(|g| g.matches(channel))
    }

    /// Whether a subscription may be opened: a channel must be granted; a
    /// pattern must overlap some grant (its messages are then filtered one by
    /// one with [`Grants::allows`]).
    pub fn permits(&self, subscription: &Pattern) -> bool {
        if subscription.is_concrete() {
            self.allows(subscription.as_bytes())
        } else {
            self.patterns.iter().any(|g| g.overlaps(subscription))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn documented_examples() {
        assert!(p("logs:w1:*").matches(b"logs:w1:f1"));
        assert!(!p("logs:w1:*").matches(b"logs:w1:x:y"));
        assert!(!p("logs:w1:*").matches(b"logs:w10:x"));
        assert!(!p("logs:w1:*").matches(b"logs:w1"));
        assert!(!p("logs:w1:*").matches(b"logs:w1:"));
        assert!(p("logs:w1:**").matches(b"logs:w1:x:y"));
        assert!(p("logs:w1:**").matches(b"logs:w1:x"));
        assert!(!p("logs:w1:**").matches(b"logs:w1"));
        assert!(p("metrics:w1").matches(b"metrics:w1"));
        assert!(!p("metrics:w1").matches(b"metrics:w1:x"));
        assert!(!p("metrics:w1").matches(b"Metrics:w1"));
    }

    #[test]
    fn escapes_and_look_alikes_never_match() {
        let g = p("dashboards:7");
        for bad in [
            &b"dashboards:7 "[..],
            b"dashboards%3A7",
            "dashboards:\u{0667}".as_bytes(),
            "dashboards\u{a789}7".as_bytes(),
            b"dashboards::7",
            b"dashboards:7\0",
        ] {
            assert!(!g.matches(bad), "{bad:?}");
            assert!(
                !p("dashboards:*").matches(bad) || bad == b"dashboards:7",
                "{bad:?}"
            );
        }
        assert!(!p("*").matches(&[b'a'; MAX_CHANNEL_LEN + 1]));
    }

    #[test]
    fn invalid_patterns() {
        for bad in ["dash*", "a:**:b", "a:***", "a::*", "", ":*", "a:*x", "é:*"] {
            assert!(Pattern::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(p("**").matches(b"anything:at:all"));
        assert!(!p("a:*:c").is_concrete() && p("a:b").is_concrete());
    }

    #[test]
    fn overlap_examples() {
        assert!(p("dashboards:*").overlaps(&p("dashboards:7")));
        assert!(!p("dashboards:*").overlaps(&p("alerts:7")));
        assert!(!p("dashboards:*").overlaps(&p("dashboards:7:x")));
        assert!(p("a:*:c").overlaps(&p("a:b:*")));
        assert!(p("a:**").overlaps(&p("*:b:c")));
        assert!(!p("a:**").overlaps(&p("a")));
    }

    #[test]
    fn redis_glob() {
        assert_eq!(p("dashboards:*").redis_glob(), "dashboards:*");
        assert_eq!(p("logs:*:**").redis_glob(), "logs:*:*");
    }

    #[test]
    fn grants_parse_and_permit() {
        let (g, invalid) = Grants::parse(&["logs:w1:*, metrics:w1", "dashboards:7 bad*x"]);
        assert_eq!(invalid, ["bad*x"]);
        assert!(g.allows(b"logs:w1:f1"));
        assert!(g.allows(b"metrics:w1"));
        assert!(!g.allows(b"metrics:w2"));
        assert!(g.permits(&p("dashboards:*")));
        assert!(!g.permits(&p("alerts:*")));
        assert!(!g.permits(&p("dashboards:8")));
        let (none, _) = Grants::parse::<&str>(&[]);
        assert!(none.is_empty() && !none.allows(b"a"));
    }

    /// A deterministic xorshift generator: property tests without crates.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    fn random_pattern(rng: &mut Rng) -> String {
        let n = 1 + rng.next() % 4;
        let mut segs: Vec<&str> = (0..n).map(|_| rng.pick(&["a", "b", "c", "*"])).collect();
        if rng.next() % 4 == 0 {
            segs.push("**");
        }
        segs.join(":")
    }

    fn random_channel(rng: &mut Rng) -> String {
        let n = 1 + rng.next() % 5;
        (0..n)
            .map(|_| rng.pick(&["a", "b", "c", "ab", ""]))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Reference matcher, written independently: character-level recursion
    /// where `*` eats one run of non-':' characters and `**` one or more
    /// such runs separated by ':'.
    fn reference_matches(pattern: &str, channel: &str) -> bool {
        fn seg_ok(s: &str) -> bool {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        let chan: Vec<&str> = channel.split(':').collect();
        if !chan.iter().all(|s| seg_ok(s)) {
            return false;
        }
        let pat: Vec<&str> = pattern.split(':').collect();
        fn go(p: &[&str], c: &[&str]) -> bool {
            match p.split_first() {
                None => c.is_empty(),
                Some((&"**", _)) => !c.is_empty(),
                Some((&"*", rest)) => !c.is_empty() && go(rest, &c[1..]),
                Some((lit, rest)) => c.first() == Some(lit) && go(rest, &c[1..]),
            }
        }
        go(&pat, &chan)
    }

    fn all_channels() -> Vec<String> {
        let mut out: Vec<String> = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..5 {
            out = out
                .iter()
                .flat_map(|prefix| {
                    ["a", "b", "c"].iter().map(move |s| {
                        if prefix.is_empty() {
                            s.to_string()
                        } else {
                            format!("{prefix}:{s}")
                        }
                    })
                })
                .collect();
            all.extend(out.iter().cloned());
        }
        all
    }

    #[test]
    fn matches_agrees_with_reference_model() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for _ in 0..20_000 {
            let pattern = random_pattern(&mut rng);
            let channel = random_channel(&mut rng);
            assert_eq!(
                p(&pattern).matches(channel.as_bytes()),
                reference_matches(&pattern, &channel),
                "{pattern} vs {channel}"
            );
        }
    }

    #[test]
    fn overlaps_agrees_with_brute_force() {
        // Every channel of up to 5 segments over {a,b,c}: enough to witness
        // any overlap of patterns of up to 5 segments over that alphabet.
        let channels = all_channels();
        let mut rng = Rng(0x2545f4914f6cdd1d);
        for _ in 0..400 {
            let a = p(&random_pattern(&mut rng));
            let b = p(&random_pattern(&mut rng));
            let witnessed = channels
                .iter()
                .any(|c| a.matches(c.as_bytes()) && b.matches(c.as_bytes()));
            assert_eq!(a.overlaps(&b), witnessed, "{a} / {b}");
            assert_eq!(a.overlaps(&b), b.overlaps(&a));
        }
    }

    #[test]
    fn grants_never_allow_what_no_grant_matches() {
        let mut rng = Rng(42);
        for _ in 0..2_000 {
            let list: Vec<String> = (0..1 + rng.next() % 3)
                .map(|_| random_pattern(&mut rng))
                .collect();
            let (g, invalid) = Grants::parse(&[list.join(",")]);
            assert!(invalid.is_empty());
            let channel = random_channel(&mut rng);
            let expected = list.iter().any(|pat| reference_matches(pat, &channel));
            assert_eq!(
                g.allows(channel.as_bytes()),
                expected,
                "{list:?} vs {channel}"
            );
        }
    }
}
