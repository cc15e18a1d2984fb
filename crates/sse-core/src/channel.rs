//! Channel names and the channel lists a request asks for.
//!
//! A channel name is 1 to [`MAX_CHANNEL_LEN`] bytes of `A-Z a-z 0-9 _ - . @`
//! in segments separated by `:`; no segment may be empty. The set is small on
//! purpose: names travel in URLs, HTTP headers, SSE `event:` fields and Redis
//! commands, and none of those can then be confused by them. `*` and `,` are
//! reserved (patterns and list separator).

use std::fmt;

/// Longest accepted channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

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
    /// No channel at all, or an empty item such as `a,,b`.
    Empty,
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
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Empty => f.write_str("empty channel name"),
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
        }
    }
}

impl std::error::Error for ChannelError {}

/// Turns the evaluated values of `sse_channel` into the channel list of one
/// connection: each value is percent-decoded once (so `encodeURIComponent`
/// output works), split at `,`, trimmed of spaces, validated, and de-duplicated
/// keeping first occurrences in order. More than `max` distinct channels, or
/// none, is an error.
pub fn parse_channel_list<V: AsRef<[u8]>>(
    values: &[V],
    max: usize,
) -> Result<Vec<ChannelName>, ChannelError> {
    let mut channels: Vec<ChannelName> = Vec::new();
    for value in values {
        let decoded = percent_decode(value.as_ref())?;
        for item in decoded.split(|&b| b == b',') {
            let channel = ChannelName::parse(item.trim_ascii())?;
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
    }
    if channels.is_empty() {
        return Err(ChannelError::Empty);
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

    fn names(list: &[ChannelName]) -> Vec<&str> {
        list.iter().map(ChannelName::as_str).collect()
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
        let list = parse_channel_list(&["a, b ,a", "c"], 10).unwrap();
        assert_eq!(names(&list), ["a", "b", "c"]);
    }

    #[test]
    fn list_percent_decodes_once() {
        let list = parse_channel_list(&["logs%3Aw1%3Af1%2Cmetrics%3aw1"], 10).unwrap();
        assert_eq!(names(&list), ["logs:w1:f1", "metrics:w1"]);
        // Double encoding stays encoded, and '%' is not a name byte.
        assert!(parse_channel_list(&["a%252Cb"], 10).is_err());
        assert_eq!(
            parse_channel_list(&["a%2"], 10),
            Err(ChannelError::BadEscape)
        );
        assert_eq!(
            parse_channel_list(&["a%zz"], 10),
            Err(ChannelError::BadEscape)
        );
    }

    #[test]
    fn list_refuses_empty_items_and_too_many() {
        assert_eq!(parse_channel_list(&["a,,b"], 10), Err(ChannelError::Empty));
        assert_eq!(parse_channel_list(&[""], 10), Err(ChannelError::Empty));
        assert_eq!(
            parse_channel_list::<&str>(&[], 10),
            Err(ChannelError::Empty)
        );
        assert_eq!(
            parse_channel_list(&["a,b,c"], 2),
            Err(ChannelError::TooMany { count: 3, max: 2 })
        );
        // Duplicates do not count against the limit.
        assert!(parse_channel_list(&["a,a,a,b"], 2).is_ok());
    }
}
