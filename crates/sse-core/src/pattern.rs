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

    /// The granted patterns, in the order given.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
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

    use proptest::prelude::*;

    /// Segments a valid pattern is made of: a small alphabet, so that
    /// patterns and channels often meet.
    fn pattern_text() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(&["a", "b", "c", "*"][..]), 1..=4),
            any::<bool>(),
        )
            .prop_map(|(mut segs, rest)| {
                if rest {
                    segs.push("**");
                }
                segs.join(":")
            })
    }

    /// Channels as published (any bytes reach `matches`): mostly names over
    /// the patterns' alphabet, sometimes an empty segment, a byte outside
    /// the name set, a look-alike or a name over the length limit.
    fn channel_bytes() -> impl Strategy<Value = Vec<u8>> {
        let segment = prop_oneof![
            12 => prop::sample::select(&["a", "b", "c", "ab"][..]).prop_map(|s| s.as_bytes().to_vec()),
            1 => prop::sample::select(&["", "*", "A", "a_b", "a.b", "a-b", "u@x", "a b", "%3A", "\u{0667}", "a\0"][..])
                .prop_map(|s| s.as_bytes().to_vec()),
            1 => prop::collection::vec(any::<u8>(), 1..4),
            1 => Just(vec![b'a'; MAX_CHANNEL_LEN]),
        ];
        prop::collection::vec(segment, 1..=5).prop_map(|segs| segs.join(&b':'))
    }

    /// Whether `raw` is a channel name, from the rules in channel.rs'
    /// documentation (written again here, not calling that code).
    fn reference_name(raw: &[u8]) -> bool {
        let name_byte = |b: &u8| b.is_ascii_alphanumeric() || b"_-.@".contains(b);
        !raw.is_empty()
            && raw.len() <= MAX_CHANNEL_LEN
            && raw
                .split(|&b| b == b':')
                .all(|seg| !seg.is_empty() && seg.iter().all(name_byte))
    }

    /// Whether `raw` is a pattern, from the rules in this module's
    /// documentation.
    fn reference_valid(raw: &[u8]) -> bool {
        let segs: Vec<&[u8]> = raw.split(|&b| b == b':').collect();
        !raw.is_empty()
            && raw.len() <= MAX_CHANNEL_LEN
            && segs.iter().enumerate().all(|(i, seg)| match *seg {
                b"*" => true,
                b"**" => i + 1 == segs.len(),
                literal => !literal.contains(&b'*') && reference_name(literal),
            })
    }

    /// Reference matcher, written independently: recursion over segments
    /// where `*` eats one segment and `**` one or more.
    fn reference_matches(pattern: &str, channel: &[u8]) -> bool {
        if !reference_name(channel) {
            return false;
        }
        let chan: Vec<&[u8]> = channel.split(|&b| b == b':').collect();
        let pat: Vec<&str> = pattern.split(':').collect();
        fn go(p: &[&str], c: &[&[u8]]) -> bool {
            match p.split_first() {
                None => c.is_empty(),
                Some((&"**", _)) => !c.is_empty(),
                Some((&"*", rest)) => !c.is_empty() && go(rest, &c[1..]),
                Some((lit, rest)) => c.first() == Some(&lit.as_bytes()) && go(rest, &c[1..]),
            }
        }
        go(&pat, &chan)
    }

    /// Every channel of up to 5 segments over {a,b,c}: enough to witness
    /// any overlap of patterns of up to 5 segments over that alphabet.
    fn all_channels() -> &'static [String] {
        static ALL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        ALL.get_or_init(|| {
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
        })
    }

    /// Whether some channel is matched by both (brute force).
    fn witnessed(a: &Pattern, b: &Pattern) -> bool {
        all_channels()
            .iter()
            .any(|c| a.matches(c.as_bytes()) && b.matches(c.as_bytes()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn matches_agrees_with_reference_model(
            pattern in pattern_text(),
            channel in channel_bytes(),
        ) {
            prop_assert_eq!(
                p(&pattern).matches(&channel),
                reference_matches(&pattern, &channel),
                "{} vs {:?}", pattern, String::from_utf8_lossy(&channel)
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn parse_agrees_with_reference_rules(
            segs in prop::collection::vec(
                prop::sample::select(
                    &["a", "b", "*", "**", "***", "", "a*", "*a", "A_-.@9", "a b", "\u{e9}", "a,b"][..],
                ),
                1..=5,
            ),
            long in any::<bool>(),
        ) {
            let mut raw = segs.join(":");
            if long {
                raw.push(':');
                raw.push_str(&"x".repeat(MAX_CHANNEL_LEN - 1));
            }
            let parsed = Pattern::parse(raw.as_bytes());
            prop_assert_eq!(parsed.is_ok(), reference_valid(raw.as_bytes()), "{:?}", raw);
            if let Ok(pattern) = parsed {
                prop_assert_eq!(pattern.as_str(), raw.as_str());
                let wild = |s: &&str| *s == "*" || *s == "**";
                prop_assert_eq!(pattern.is_concrete(), !segs.iter().any(wild));
                prop_assert_eq!(pattern.redis_glob(), raw.replace("**", "*"));
                // A concrete pattern is the channel it names.
                if pattern.is_concrete() {
                    prop_assert!(pattern.matches(raw.as_bytes()));
                }
            }
        }

        #[test]
        fn overlaps_agrees_with_brute_force(a in pattern_text(), b in pattern_text()) {
            let (a, b) = (p(&a), p(&b));
            prop_assert_eq!(a.overlaps(&b), witnessed(&a, &b), "{} / {}", a, b);
            prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
        }

        #[test]
        fn grants_allow_and_permit_exactly_what_their_patterns_match(
            list in prop::collection::vec(
                prop_oneof![
                    4 => pattern_text(),
                    1 => prop::sample::select(&["bad*x", "a:**:b", "a::b", "\u{e9}"][..])
                        .prop_map(str::to_string),
                ],
                0..=3,
            ),
            separators in prop::collection::vec(
                prop::sample::select(&[",", " ", ", ", "\t", ",,"][..]),
                3,
            ),
            channel in channel_bytes(),
            subscription in pattern_text(),
        ) {
            let mut header = String::new();
            for (item, sep) in list.iter().zip(&separators) {
                header.push_str(item);
                header.push_str(sep);
            }
            let (g, invalid) = Grants::parse(&[header.as_bytes()]);
            let valid: Vec<&String> =
                list.iter().filter(|i| reference_valid(i.as_bytes())).collect();
            let expected_invalid: Vec<&String> =
                list.iter().filter(|i| !reference_valid(i.as_bytes())).collect();
            prop_assert_eq!(invalid.iter().collect::<Vec<_>>(), expected_invalid);
            prop_assert_eq!(g.is_empty(), valid.is_empty());
            let expected = valid.iter().any(|pat| reference_matches(pat, &channel));
            prop_assert_eq!(g.allows(&channel), expected, "{:?} vs {:?}", list, channel);
            // A subscription is permitted when some channel it can receive
            // is granted.
            let sub = p(&subscription);
            let expected = valid.iter().any(|pat| witnessed(&p(pat), &sub));
            prop_assert_eq!(g.permits(&sub), expected, "{:?} vs {}", list, sub);
        }
    }
}
