//! The publishing format: a payload is delivered verbatim, unless its first
//! byte is 0x1E (ASCII "record separator"), which marks an *envelope*:
//!
//! ```text
//! \x1e sse1 [id=N] [to=USER[,USER...]] \n BODY
//! ```
//!
//! - `sse1` is the format version; the header ends at the first `\n`;
//! - `id=` is the event's position in the history (set by the `sse_publish`
//!   Redis function, see `redis/sse.lua`); it becomes the SSE `id:`;
//! - `prefix=` names the history (`sse_redis_prefix`) that issued `id=`,
//!   when it is not the default `sse`: ids are positions in one prefix's
//!   sequence and mean nothing to an nginx configured with another prefix;
//! - `to=` names the audience: only streams whose `sse_user` is one of these
//!   users receive the event (others on the same channel never see it);
//! - BODY, everything after the first `\n`, is the event's data, verbatim.
//!
//! No payload is ambiguous: one that does not start with 0x1E is never read
//! as an envelope, and one that does is always read as one. A publisher
//! whose raw payload starts with 0x1E wraps it in an empty envelope
//! (`\x1esse1\n` + payload). An envelope that cannot be read is an error:
//! the message is skipped and logged, never delivered to everyone.

use std::fmt;

use crate::channel::ChannelName;

pub const MARK: u8 = 0x1e;
/// The history prefix of `sse_publish` and `sse_redis_prefix` when none is given.
pub const DEFAULT_PREFIX: &str = "sse";
const VERSION: &[u8] = b"sse1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Global sequence number of a message published with history.
    pub id: Option<u64>,
    /// The history prefix that issued `id` (`None`: the default, `sse`).
    pub prefix: Option<&'a [u8]>,
    /// `None`: every subscriber of the channel; `Some`: only these users.
    pub audience: Option<Vec<&'a [u8]>>,
    pub body: &'a [u8],
}

impl Envelope<'_> {
    /// Whether the event belongs to the history named `prefix`: true for
    /// events without an id (plain publishes belong to every application
    /// subscribed to the channel) and for ids issued under `prefix`.
    pub fn belongs_to(&self, prefix: &[u8]) -> bool {
        self.id.is_none() || self.prefix.unwrap_or(DEFAULT_PREFIX.as_bytes()) == prefix
    }

    /// Whether a stream of `user` (None: anonymous) may receive this event.
    pub fn admits(&self, user: Option<&[u8]>) -> bool {
        audience_admits(self.audience.as_deref(), user)
    }
}

/// Whether `user` (None: anonymous) is in `audience` (None: everyone).
pub fn audience_admits<U: AsRef<[u8]>>(audience: Option<&[U]>, user: Option<&[u8]>) -> bool {
    match (audience, user) {
        (None, _) => true,
        (Some(users), Some(user)) => users.iter().any(|u| u.as_ref() == user),
        (Some(_), None) => false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    NoHeaderEnd,
    Version,
    UnknownField(String),
    BadUser(String),
    EmptyAudience,
    BadId(String),
    BadPrefix(String),
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::NoHeaderEnd => f.write_str("envelope header has no terminating newline"),
            EnvelopeError::Version => f.write_str("envelope does not start with \"sse1\""),
            EnvelopeError::UnknownField(x) => write!(f, "envelope has an unknown field \"{x}\""),
            EnvelopeError::BadUser(u) => write!(f, "envelope names an invalid user \"{u}\""),
            EnvelopeError::EmptyAudience => f.write_str("envelope has an empty \"to=\" list"),
            EnvelopeError::BadId(id) => write!(f, "envelope has an invalid id \"{id}\""),
            EnvelopeError::BadPrefix(p) => write!(f, "envelope has an invalid prefix \"{p}\""),
        }
    }
}

impl std::error::Error for EnvelopeError {}

pub fn parse(payload: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    if payload.first() != Some(&MARK) {
        return Ok(Envelope {
            id: None,
            prefix: None,
            audience: None,
            body: payload,
        });
    }
    let rest = &payload[1..];
    let end = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(EnvelopeError::NoHeaderEnd)?;
    let (header, body) = (&rest[..end], &rest[end + 1..]);
    let mut fields = header.split(|&b| b == b' ').filter(|f| !f.is_empty());
    if fields.next() != Some(VERSION) {
        return Err(EnvelopeError::Version);
    }
    let mut audience = None;
    let mut id = None;
    let mut prefix = None;
    for field in fields {
        if let Some(value) = field.strip_prefix(b"prefix=") {
            if prefix.is_some() {
                return Err(EnvelopeError::UnknownField("prefix (twice)".into()));
            }
            if ChannelName::parse(value).is_err() {
                return Err(EnvelopeError::BadPrefix(
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
            prefix = Some(value);
            continue;
        }
        if let Some(value) = field.strip_prefix(b"id=") {
            let shown = || String::from_utf8_lossy(value).into_owned();
            if id.is_some() {
                return Err(EnvelopeError::UnknownField("id (twice)".into()));
            }
            id = Some(parse_id(value).ok_or_else(|| EnvelopeError::BadId(shown()))?);
            continue;
        }
        let Some(users) = field.strip_prefix(b"to=") else {
            return Err(EnvelopeError::UnknownField(
                String::from_utf8_lossy(field).into_owned(),
            ));
        };
        if audience.is_some() {
            return Err(EnvelopeError::UnknownField("to (twice)".into()));
        }
        let list: Vec<&[u8]> = users.split(|&b| b == b',').collect();
        if list.iter().all(|u| u.is_empty()) {
            return Err(EnvelopeError::EmptyAudience);
        }
        for user in &list {
            if !valid_user(user) {
                return Err(EnvelopeError::BadUser(
                    String::from_utf8_lossy(user).into_owned(),
                ));
            }
        }
        audience = Some(list);
    }
    Ok(Envelope {
        id,
        prefix,
        audience,
        body,
    })
}

/// Event ids are decimal u64 without sign or leading zeros (what INCR gives).
pub fn parse_id(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 || (raw[0] == b'0' && raw.len() > 1) {
        return None;
    }
    if !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// User ids follow the channel name rules (they appear in channel names
/// such as `alerts:u42`, in logs and in envelopes).
pub fn valid_user(user: &[u8]) -> bool {
    ChannelName::parse(user).is_ok()
}

/// Messages on the control channel, [`CONTROL_CHANNEL`].
pub const CONTROL_CHANNEL: &str = "sse:control";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control<'a> {
    /// `revoke USER [USER...]`: close these users' streams now, on every
    /// worker of every nginx; their browsers reconnect and authenticate anew.
    Revoke(Vec<&'a [u8]>),
}

/// Why a message on the control channel was not understood. It is logged
/// and skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// Nothing but whitespace.
    Empty,
    /// The first word is not a command we know.
    UnknownCommand(String),
    /// `revoke` without a user.
    RevokeNoUser,
    /// `revoke` naming something that is not a valid user id.
    RevokeBadUser(String),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Empty => f.write_str("empty control message"),
            ControlError::UnknownCommand(c) => write!(f, "unknown control command \"{c}\""),
            ControlError::RevokeNoUser => f.write_str("\"revoke\" names no user"),
            ControlError::RevokeBadUser(u) => {
                write!(f, "\"revoke\" names an invalid user \"{u}\"")
            }
        }
    }
}

impl std::error::Error for ControlError {}

pub fn parse_control(payload: &[u8]) -> Result<Control<'_>, ControlError> {
    let mut words = payload
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    match words.next() {
        Some(b"revoke") => {
            let users: Vec<&[u8]> = words.collect();
            if users.is_empty() {
                return Err(ControlError::RevokeNoUser);
            }
            if let Some(bad) = users.iter().find(|u| !valid_user(u)) {
                return Err(ControlError::RevokeBadUser(
                    String::from_utf8_lossy(bad).into_owned(),
                ));
            }
            Ok(Control::Revoke(users))
        }
        Some(other) => Err(ControlError::UnknownCommand(
            String::from_utf8_lossy(other).into_owned(),
        )),
        None => Err(ControlError::Empty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_payloads_are_verbatim() {
        for raw in [
            &b""[..],
            b"hello",
            b"sse1 to=u1\nx",
            b"\n\x1esse1\n",
            b"\xff\x00",
        ] {
            assert_eq!(
                parse(raw),
                Ok(Envelope {
                    id: None,
                    prefix: None,
                    audience: None,
                    body: raw
                })
            );
        }
    }

    #[test]
    fn audience_envelope() {
        let env = parse(b"\x1esse1 to=u1,u2\n{\"a\":1}\nline2").unwrap();
        assert_eq!(env.audience, Some(vec![&b"u1"[..], b"u2"]));
        assert_eq!(env.body, b"{\"a\":1}\nline2");
        assert!(env.admits(Some(b"u1")) && env.admits(Some(b"u2")));
        assert!(!env.admits(Some(b"u3")) && !env.admits(None) && !env.admits(Some(b"u")));
    }

    #[test]
    fn empty_envelope_carries_any_payload() {
        let env = parse(b"\x1esse1\n\x1esse1 to=x\nstill body").unwrap();
        assert_eq!(env.audience, None);
        assert_eq!(env.body, b"\x1esse1 to=x\nstill body");
        assert!(env.admits(None));
    }

    #[test]
    fn malformed_envelopes_are_errors_not_broadcasts() {
        assert_eq!(parse(b"\x1esse1 to=u1"), Err(EnvelopeError::NoHeaderEnd));
        assert_eq!(parse(b"\x1esse2\nx"), Err(EnvelopeError::Version));
        assert_eq!(parse(b"\x1e\nx"), Err(EnvelopeError::Version));
        assert!(matches!(
            parse(b"\x1esse1 cc=u1\nx"),
            Err(EnvelopeError::UnknownField(_))
        ));
        assert!(matches!(
            parse(b"\x1esse1 to=u1 to=u2\nx"),
            Err(EnvelopeError::UnknownField(_))
        ));
        assert_eq!(parse(b"\x1esse1 to=\nx"), Err(EnvelopeError::EmptyAudience));
        assert!(matches!(
            parse(b"\x1esse1 to=u 1\nx"),
            Err(EnvelopeError::UnknownField(_))
        ));
        assert!(matches!(
            parse(b"\x1esse1 to=u1,,u2\nx"),
            Err(EnvelopeError::BadUser(_))
        ));
        assert!(matches!(
            parse(b"\x1esse1 to=\xc3\xa9\nx"),
            Err(EnvelopeError::BadUser(_))
        ));
    }

    #[test]
    fn control_messages() {
        assert_eq!(
            parse_control(b"revoke u42"),
            Ok(Control::Revoke(vec![&b"u42"[..]]))
        );
        assert_eq!(
            parse_control(b" revoke  a b\n"),
            Ok(Control::Revoke(vec![&b"a"[..], b"b"]))
        );
        for (raw, error, message) in [
            (
                &b"revoke"[..],
                ControlError::RevokeNoUser,
                "\"revoke\" names no user",
            ),
            (
                b"revoke a,b",
                ControlError::RevokeBadUser("a,b".into()),
                "\"revoke\" names an invalid user \"a,b\"",
            ),
            (
                b"shutdown now",
                ControlError::UnknownCommand("shutdown".into()),
                "unknown control command \"shutdown\"",
            ),
            (b"", ControlError::Empty, "empty control message"),
            (b" \n\t", ControlError::Empty, "empty control message"),
        ] {
            assert_eq!(parse_control(raw), Err(error.clone()), "{raw:?}");
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn ids() {
        let env = parse(b"\x1esse1 id=42 to=u1\nbody").unwrap();
        assert_eq!(env.id, Some(42));
        assert_eq!(env.audience, Some(vec![&b"u1"[..]]));
        assert_eq!(parse(b"\x1esse1 id=7\n").unwrap().id, Some(7));
        for bad in [
            &b"\x1esse1 id=\nx"[..],
            b"\x1esse1 id=-1\nx",
            b"\x1esse1 id=01\nx",
            b"\x1esse1 id=1a\nx",
            b"\x1esse1 id=99999999999999999999999\nx",
        ] {
            assert!(
                matches!(parse(bad), Err(EnvelopeError::BadId(_))),
                "{bad:?}"
            );
        }
        assert_eq!(parse_id(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_id(b"18446744073709551616"), None);
        assert_eq!(parse_id(b"0"), Some(0));
    }

    #[test]
    fn prefixes_isolate_ids() {
        let default = parse(b"\x1esse1 id=3\nx").unwrap();
        assert!(default.belongs_to(b"sse") && !default.belongs_to(b"app2"));
        let app2 = parse(b"\x1esse1 id=3 prefix=app2 to=u1\nx").unwrap();
        assert_eq!(app2.prefix, Some(&b"app2"[..]));
        assert!(app2.belongs_to(b"app2") && !app2.belongs_to(b"sse"));
        // Plain publishes have no id: they belong to everyone.
        assert!(parse(b"plain").unwrap().belongs_to(b"app2"));
        assert!(matches!(
            parse(b"\x1esse1 id=3 prefix=\nx"),
            Err(EnvelopeError::BadPrefix(_))
        ));
        assert!(matches!(
            parse(b"\x1esse1 prefix=a prefix=b\nx"),
            Err(EnvelopeError::UnknownField(_))
        ));
    }
}
