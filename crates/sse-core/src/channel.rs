//! Channel names and the channel lists a request asks for.
//!
//! A channel name is 1 to [`MAX_CHANNEL_LEN`] bytes of `A-Z a-z 0-9 _ - . @`
//! in segments separated by `:`; no segment may be empty. The set is small on
//! purpose: names travel in URLs, HTTP headers, SSE `event:` fields and Redis
//! commands, and none of those can then be confused by them. `*` and `,` are
//! reserved (patterns and list separator).

use std::fmt;

use crate::pattern::Pattern;

/// Longest accepted channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Channels starting with this prefix are the module's own (the control
/// channel): clients can neither subscribe to them nor receive them.
pub const RESERVED_PREFIX: &str = "sse:";

/// Whether a channel (as published) is one of the module's own.
pub fn is_reserved(channel: &[u8]) -> bool {
    channel.starts_with(RESERVED_PREFIX.as_bytes())
}

/// A validated channel name (see the module documentation for the rules).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Box<str>);

impl ChannelName {
    /// Validates `raw` as one channel name.
    pub fn parse(raw: &[u8]) -> Result<Self, ChannelError> {
        let shown = || String::from_utf8_lossy(raw).into_owned();
        if raw.is_empty() {
            return Err(ChannelError::Empty);
        }
        if raw.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong { len: raw.len() });
        }
        if let Some(&bad) = raw.iter().find(|&&b| !is_name_byte(b)) {
            return Err(ChannelError::InvalidByte {
                name: shown(),
                byte: bad,
            });
        }
        if raw.split(|&b| b == b':').any(|segment| segment.is_empty()) {
            return Err(ChannelError::EmptySegment { name: shown() });
        }
        // Every byte is ASCII, checked above.
        let name = std::str::from_utf8(raw).map_err(|_| ChannelError::Empty)?;
        Ok(ChannelName(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b':')
}

/// Why a requested channel list was refused. `Display` is the reason sent to
/// the client in a 400 body, so it names the offending input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// An empty name, or an empty item such as `a,,b`.
    Empty,
    /// Every value of the list was empty: nothing to subscribe to.
    NoChannel,
    TooLong {
        len: usize,
    },
    InvalidByte {
        name: String,
        byte: u8,
    },
    EmptySegment {
        name: String,
    },
    TooMany {
        count: usize,
        max: usize,
    },
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `*` inside a segment, or `**` before the last segment.
    MisplacedWildcard {
        name: String,
    },
    /// A wildcard where the location does not allow pattern subscriptions.
    PatternNotAllowed {
        name: String,
    },
    /// Two requested subscriptions could match the same channel (the client
    /// would get its events twice).
    Overlap {
        first: String,
        second: String,
    },
    /// `sse:` names are the module's own (control messages).
    Reserved {
        name: String,
    },
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Empty => f.write_str("empty channel name"),
            ChannelError::NoChannel => f.write_str("no channel requested"),
            ChannelError::TooLong { len } => write!(
                f,
                "channel name of {len} bytes is longer than {MAX_CHANNEL_LEN}"
            ),
            ChannelError::InvalidByte { name, byte } => {
                let shown = if byte.is_ascii_graphic() {
                    format!("'{}'", *byte as char)
                } else {
                    format!("0x{byte:02x}")
                };
                write!(
                    f,
                    "channel name \"{}\" contains {shown}; allowed are A-Z a-z 0-9 _ - . @ and ':' between segments",
                    name.escape_debug()
                )
            }
            ChannelError::EmptySegment { name } => write!(
                f,
                "channel name \"{}\" has an empty ':' segment",
                name.escape_debug()
            ),
            ChannelError::TooMany { count, max } => {
                write!(f, "{count} channels requested, at most {max} allowed")
            }
            ChannelError::BadEscape => f.write_str("malformed %-escape in channel list"),
            ChannelError::MisplacedWildcard { name } => write!(
                f,
                "pattern \"{}\": '*' must be a whole segment and '**' the last one",
                name.escape_debug()
            ),
            ChannelError::PatternNotAllowed { name } => write!(
                f,
                "\"{}\" is a pattern; this location serves channels, not patterns",
                name.escape_debug()
            ),
            ChannelError::Overlap { first, second } => write!(
                f,
                "\"{first}\" and \"{second}\" overlap; ask for each channel once"
            ),
            ChannelError::Reserved { name } => write!(
                f,
                "\"{}\" is reserved (names starting with \"{RESERVED_PREFIX}\" are the module's own)",
                name.escape_debug()
            ),
        }
    }
}

impl std::error::Error for ChannelError {}

/// How a location reads channel lists.
#[derive(Clone, Copy, Debug)]
pub struct ListRules {
    /// Most distinct subscriptions per connection.
    pub max: usize,
    /// Whether wildcard patterns may be subscribed to.
    pub patterns: bool,
}

/// Turns the evaluated values of `sse_channel` into the subscriptions of one
/// connection: each value is percent-decoded once (so `encodeURIComponent`
/// output works), split at `,`, trimmed of spaces, validated, and de-duplicated
/// keeping first occurrences in order. A value that is empty as a whole
/// contributes nothing, so optional variables work; an empty item inside a
/// value (`a,,b`) is an error. More than `rules.max` distinct
/// subscriptions, none, reserved names, and (with patterns) two that overlap
/// are errors.
pub fn parse_channel_list<V: AsRef<[u8]>>(
    values: &[V],
    rules: ListRules,
) -> Result<Vec<Pattern>, ChannelError> {
    let mut channels: Vec<Pattern> = Vec::new();
    for value in values {
        if value.as_ref().is_empty() {
            // An optional variable that is not set (`$arg_b` without `b`).
            continue;
        }
        let decoded = percent_decode(value.as_ref())?;
        for item in decoded.split(|&b| b == b',') {
            let item = item.trim_ascii();
            let shown = || String::from_utf8_lossy(item).into_owned();
            let channel = Pattern::parse(item)?;
            if !channel.is_concrete() && !rules.patterns {
                return Err(ChannelError::PatternNotAllowed { name: shown() });
            }
            if is_reserved(item) {
                return Err(ChannelError::Reserved { name: shown() });
            }
            if channels.contains(&channel) {
                continue;
            }
            if let Some(other) = channels.iter().find(|c| c.overlaps(&channel)) {
                return Err(ChannelError::Overlap {
                    first: other.to_string(),
                    second: channel.to_string(),
                });
            }
            channels.push(channel);
        }
    }
    let max = rules.max;
    if channels.is_empty() {
        return Err(ChannelError::NoChannel);
    }
    if channels.len() > max {
        return Err(ChannelError::TooMany {
            count: channels.len(),
            max,
        });
    }
    Ok(channels)
}

/// Decodes `%XX` escapes once. `+` is left alone: it is not a valid name byte,
/// so a form-encoded space is refused rather than guessed at.
fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, ChannelError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = raw.get(i + 1).and_then(|&b| hex(b));
            let lo = raw.get(i + 2).and_then(|&b| hex(b));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(ChannelError::BadEscape),
            }
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[Pattern]) -> Vec<&str> {
        list.iter().map(Pattern::as_str).collect()
    }

    const RULES: ListRules = ListRules {
        max: 10,
        patterns: false,
    };
    const PATTERNS: ListRules = ListRules {
        max: 10,
        patterns: true,
    };

    fn rules(max: usize) -> ListRules {
        ListRules {
            max,
            patterns: false,
        }
    }

    #[test]
    fn accepts_documented_names() {
        for ok in [
            "logs:w1:f1",
            "metrics:w1",
            "alerts:u42",
            "dashboards:7",
            "a",
            "A-b_c.d@e",
        ] {
            assert!(ChannelName::parse(ok.as_bytes()).is_ok(), "{ok}");
        }
        assert!(ChannelName::parse("x".repeat(MAX_CHANNEL_LEN).as_bytes()).is_ok());
    }

    #[test]
    fn refuses_bad_names_with_reasons() {
        assert_eq!(ChannelName::parse(b""), Err(ChannelError::Empty));
        assert!(matches!(
            ChannelName::parse("x".repeat(MAX_CHANNEL_LEN + 1).as_bytes()),
            Err(ChannelError::TooLong { len: 129 })
        ));
        for bad in ["a b", "a*", "a/b", "a\nb", "a%b", "é", "a\0", "a,b", "а"] {
            let err = ChannelName::parse(bad.as_bytes()).unwrap_err();
            assert!(
                matches!(err, ChannelError::InvalidByte { .. }),
                "{bad}: {err}"
            );
        }
        for bad in [":a", "a:", "a::b", ":"] {
            assert!(matches!(
                ChannelName::parse(bad.as_bytes()),
                Err(ChannelError::EmptySegment { .. })
            ));
        }
    }

    #[test]
    fn error_messages_name_the_input() {
        let err = ChannelName::parse(b"logs:w 1").unwrap_err().to_string();
        assert!(err.contains("\"logs:w 1\""), "{err}");
        assert!(err.contains("0x20"), "{err}");
        let err = ChannelName::parse(b"a*").unwrap_err().to_string();
        assert!(err.contains("'*'"), "{err}");
    }

    #[test]
    fn list_splits_trims_and_dedups() {
        let list = parse_channel_list(&["a, b ,a", "c"], RULES).unwrap();
        assert_eq!(names(&list), ["a", "b", "c"]);
    }

    #[test]
    fn list_percent_decodes_once() {
        let list = parse_channel_list(&["logs%3Aw1%3Af1%2Cmetrics%3aw1"], RULES).unwrap();
        assert_eq!(names(&list), ["logs:w1:f1", "metrics:w1"]);
        // Double encoding stays encoded, and '%' is not a name byte.
        assert!(parse_channel_list(&["a%252Cb"], RULES).is_err());
        assert_eq!(
            parse_channel_list(&["a%2"], RULES),
            Err(ChannelError::BadEscape)
        );
        assert_eq!(
            parse_channel_list(&["a%zz"], RULES),
            Err(ChannelError::BadEscape)
        );
    }

    #[test]
    fn empty_values_contribute_nothing() {
        // `sse_channel $arg_a $arg_b;` with only `a` set.
        let list = parse_channel_list(&["x", ""], RULES).unwrap();
        assert_eq!(names(&list), ["x"]);
        let list = parse_channel_list(&["", "y"], RULES).unwrap();
        assert_eq!(names(&list), ["y"]);
    }

    #[test]
    fn list_refuses_empty_items_and_too_many() {
        assert_eq!(
            parse_channel_list(&["a,,b"], RULES),
            Err(ChannelError::Empty)
        );
        assert_eq!(
            parse_channel_list(&["", ""], RULES),
            Err(ChannelError::NoChannel)
        );
        assert_eq!(
            parse_channel_list::<&str>(&[], RULES),
            Err(ChannelError::NoChannel)
        );
        assert_eq!(parse_channel_list(&[" "], RULES), Err(ChannelError::Empty));
        assert_eq!(
            parse_channel_list(&["a,b,c"], rules(2)),
            Err(ChannelError::TooMany { count: 3, max: 2 })
        );
        // Duplicates do not count against the limit.
        assert!(parse_channel_list(&["a,a,a,b"], rules(2)).is_ok());
    }

    #[test]
    fn patterns_only_where_allowed() {
        assert!(matches!(
            parse_channel_list(&["dashboards:*"], RULES),
            Err(ChannelError::PatternNotAllowed { .. })
        ));
        let list = parse_channel_list(&["dashboards:*,alerts:u1"], PATTERNS).unwrap();
        assert_eq!(names(&list), ["dashboards:*", "alerts:u1"]);
        assert!(matches!(
            parse_channel_list(&["dash*"], PATTERNS),
            Err(ChannelError::MisplacedWildcard { .. })
        ));
    }

    #[test]
    fn overlapping_subscriptions_are_refused() {
        let err = parse_channel_list(&["dashboards:*,dashboards:7"], PATTERNS).unwrap_err();
        assert!(matches!(err, ChannelError::Overlap { .. }), "{err}");
        assert!(parse_channel_list(&["a:*:c,a:b:*"], PATTERNS).is_err());
        assert!(parse_channel_list(&["a:*,b:*"], PATTERNS).is_ok());
    }

    #[test]
    fn reserved_names_are_refused() {
        assert!(matches!(
            parse_channel_list(&["sse:control"], RULES),
            Err(ChannelError::Reserved { .. })
        ));
        assert!(is_reserved(b"sse:control") && !is_reserved(b"ssex:control"));
    }
}
