//! RESP2, the Redis wire protocol: an incremental parser for replies and an
//! encoder for commands.
//!
//! The parser borrows from the read buffer (no copy of payloads) and reports
//! `Ok(None)` until a whole value has arrived, so the caller can feed it the
//! bytes of a non-blocking socket as they come.

use std::fmt;

/// One reply value, borrowing from the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    /// `None` is the null bulk string (`$-1`).
    Bulk(Option<&'a [u8]>),
    /// `None` is the null array (`*-1`).
    Array(Option<Vec<Value<'a>>>),
}

impl<'a> Value<'a> {
    /// The bytes of a bulk or simple string.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Bulk(Some(b)) | Value::Simple(b) => Some(b),
            _ => None,
        }
    }
}

/// The stream is not RESP: the connection cannot be resynchronised and has to
/// be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redis protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// Nesting deeper than this is refused (pub/sub replies nest at most once).
const MAX_DEPTH: usize = 8;
/// Bulk strings larger than Redis' own default `proto-max-bulk-len` are refused.
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Arrays longer than this are refused; replies we ask for are short.
const MAX_ARRAY_LEN: usize = 1024 * 1024;

/// Parses one value from the start of `buf`. Returns the value and the number
/// of bytes it took, `Ok(None)` if `buf` holds only part of a value.
pub fn parse(buf: &[u8]) -> Result<Option<(Value<'_>, usize)>, ProtocolError> {
    parse_at(buf, 0, 0)
}

fn parse_at(
    buf: &[u8],
    pos: usize,
    depth: usize,
) -> Result<Option<(Value<'_>, usize)>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError("nesting too deep"));
    }
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((line, after)) = line_at(buf, pos + 1)? else {
        return Ok(None);
    };
    match kind {
        b'+' => Ok(Some((Value::Simple(line), after))),
        b'-' => Ok(Some((Value::Error(line), after))),
        b':' => Ok(Some((Value::Integer(parse_int(line)?), after))),
        b'$' => {
            let len = parse_int(line)?;
            if len == -1 {
                return Ok(Some((Value::Bulk(None), after)));
            }
            let len = usize::try_from(len).map_err(|_| ProtocolError("negative bulk length"))?;
            if len > MAX_BULK_LEN {
                return Err(ProtocolError("bulk string too long"));
            }
            let end = after + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not terminated by CRLF"));
            }
            Ok(Some((Value::Bulk(Some(&buf[after..end])), end + 2)))
        }
        b'*' => {
            let len = parse_int(line)?;
            if len == -1 {
                return Ok(Some((Value::Array(None), after)));
            }
            let len = usize::try_from(len).map_err(|_| ProtocolError("negative array length"))?;
            if len > MAX_ARRAY_LEN {
                return Err(ProtocolError("array too long"));
            }
            let mut items = Vec::with_capacity(len.min(16));
            let mut at = after;
            for _ in 0..len {
                match parse_at(buf, at, depth + 1)? {
                    Some((item, next)) => {
                        items.push(item);
                        at = next;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(Some(items)), at)))
        }
        _ => Err(ProtocolError("unknown type byte")),
    }
}

/// Longest header line we wait for before calling the stream broken.
const MAX_LINE: usize = 64 * 1024;

fn line_at(buf: &[u8], start: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = buf.get(start..).unwrap_or_default();
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&rest[..i], start + i + 2))),
        None if rest.len() > MAX_LINE => Err(ProtocolError("line too long")),
        None => Ok(None),
    }
}

fn parse_int(line: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ProtocolError("malformed integer"))
}

/// Appends a command as a RESP array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// What a reply on a subscribed connection means to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubSubReply<'a> {
    /// A message published on a channel we subscribed to (`subscription`
    /// is the channel) or that matched a pattern we subscribed to
    /// (`subscription` is the pattern).
    Message {
        subscription: &'a [u8],
        channel: &'a [u8],
        payload: &'a [u8],
    },
    /// Confirmation of SUBSCRIBE / UNSUBSCRIBE (one per channel).
    Subscribed {
        channel: &'a [u8],
    },
    Unsubscribed {
        channel: &'a [u8],
    },
    /// The answer to `PING <token>` in subscribe mode: every command sent
    /// before it (SUBSCRIBE...) has been processed.
    Pong(&'a [u8]),
    /// `+OK` of AUTH / SELECT, anything else that is not an error.
    Ack,
    /// A `-ERR ...` reply.
    Error(&'a [u8]),
}

/// Why a well-formed RESP value is not a pub/sub reply we understand. Such a
/// value is logged and skipped; the connection stays usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnexpectedReply(pub String);

impl fmt::Display for UnexpectedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unexpected reply on the subscriber connection: {}",
            self.0
        )
    }
}

/// Classifies one value read from a connection in subscribe mode.
pub fn pubsub_reply<'a>(value: &Value<'a>) -> Result<PubSubReply<'a>, UnexpectedReply> {
    let items = match value {
        Value::Error(msg) => return Ok(PubSubReply::Error(msg)),
        Value::Simple(_) | Value::Integer(_) | Value::Bulk(_) => return Ok(PubSubReply::Ack),
        Value::Array(None) => return Err(UnexpectedReply("null array".into())),
        Value::Array(Some(items)) => items,
    };
    let bytes: Vec<Option<&[u8]>> = items.iter().map(Value::as_bytes).collect();
    match bytes.as_slice() {
        [Some(b"message"), Some(channel), Some(payload)] => Ok(PubSubReply::Message {
            subscription: channel,
            channel,
            payload,
        }),
        [Some(b"pmessage"), Some(pattern), Some(channel), Some(payload)] => {
            Ok(PubSubReply::Message {
                subscription: pattern,
                channel,
                payload,
            })
        }
        [Some(b"subscribe" | b"psubscribe"), Some(channel), _] => {
            Ok(PubSubReply::Subscribed { channel })
        }
        [Some(b"unsubscribe" | b"punsubscribe"), Some(channel), _] => {
            Ok(PubSubReply::Unsubscribed { channel })
        }
        // PING in subscribe mode answers ["pong", ""].
        [Some(b"pong"), Some(token)] => Ok(PubSubReply::Pong(token)),
        _ => Err(UnexpectedReply(format!(
            "{} element(s), kind {:?}",
            items.len(),
            bytes
                .first()
                .copied()
                .flatten()
                .map(String::from_utf8_lossy)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_command(&mut out, args);
        out
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        assert_eq!(
            cmd(&["SUBSCRIBE", "a:b"]),
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$3\r\na:b\r\n"
        );
        assert_eq!(cmd(&[""]), b"*1\r\n$0\r\n\r\n");
    }

    #[test]
    fn parses_scalars() {
        assert_eq!(parse(b"+OK\r\n"), Ok(Some((Value::Simple(b"OK"), 5))));
        assert_eq!(parse(b"-ERR x\r\n"), Ok(Some((Value::Error(b"ERR x"), 8))));
        assert_eq!(parse(b":42\r\n"), Ok(Some((Value::Integer(42), 5))));
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Value::Bulk(None), 5))));
        assert_eq!(parse(b"$0\r\n\r\n"), Ok(Some((Value::Bulk(Some(b"")), 6))));
        assert_eq!(parse(b"*-1\r\n"), Ok(Some((Value::Array(None), 5))));
    }

    #[test]
    fn bulk_may_contain_crlf_and_binary() {
        let buf = b"$6\r\na\r\n\0\xff\n\r\n";
        assert_eq!(
            parse(buf),
            Ok(Some((Value::Bulk(Some(b"a\r\n\0\xff\n")), buf.len())))
        );
    }

    #[test]
    fn every_prefix_of_a_message_is_incomplete() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$12\r\nhello\r\nworld\r\n";
        for cut in 0..msg.len() {
            assert_eq!(parse(&msg[..cut]), Ok(None), "cut at {cut}");
        }
        let (value, used) = parse(msg).unwrap().unwrap();
        assert_eq!(used, msg.len());
        assert_eq!(
            pubsub_reply(&value),
            Ok(PubSubReply::Message {
                subscription: b"chan",
                channel: b"chan",
                payload: b"hello\r\nworld"
            })
        );
    }

    #[test]
    fn two_values_back_to_back() {
        let buf = b":1\r\n:2\r\n";
        let (_, used) = parse(buf).unwrap().unwrap();
        assert_eq!(parse(&buf[used..]), Ok(Some((Value::Integer(2), 4))));
    }

    #[test]
    fn broken_streams_are_protocol_errors() {
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b":abc\r\n").is_err());
        assert!(parse(b"$3\r\nabcXY").is_err());
        assert!(parse(b"$-5\r\n").is_err());
        assert!(parse(b"$999999999999\r\n").is_err());
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
        assert!(parse(&vec![b'+'; MAX_LINE + 10]).is_err());
    }

    #[test]
    fn pattern_messages_name_their_pattern() {
        let raw = b"*4\r\n$8\r\npmessage\r\n$3\r\nd:*\r\n$3\r\nd:7\r\n$2\r\nhi\r\n";
        let (v, _) = parse(raw).unwrap().unwrap();
        assert_eq!(
            pubsub_reply(&v),
            Ok(PubSubReply::Message {
                subscription: b"d:*",
                channel: b"d:7",
                payload: b"hi"
            })
        );
    }

    #[test]
    fn subscribe_confirmations_and_errors() {
        let (v, _) = parse(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            pubsub_reply(&v),
            Ok(PubSubReply::Subscribed { channel: b"a" })
        );
        let (v, _) = parse(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            pubsub_reply(&v),
            Ok(PubSubReply::Unsubscribed { channel: b"a" })
        );
        let (v, _) = parse(b"-NOAUTH x\r\n").unwrap().unwrap();
        assert_eq!(pubsub_reply(&v), Ok(PubSubReply::Error(b"NOAUTH x")));
    }

    #[test]
    fn malformed_pubsub_values_are_reported_not_fatal() {
        for raw in [
            &b"*2\r\n$7\r\nmessage\r\n$1\r\na\r\n"[..],
            b"*3\r\n$7\r\nmessage\r\n:1\r\n$1\r\nx\r\n",
            b"*0\r\n",
            b"*-1\r\n",
        ] {
            let (v, _) = parse(raw).unwrap().unwrap();
            assert!(pubsub_reply(&v).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn pong_carries_its_token() {
        let (v, _) = parse(b"*2\r\n$4\r\npong\r\n$2\r\n17\r\n").unwrap().unwrap();
        assert_eq!(pubsub_reply(&v), Ok(PubSubReply::Pong(b"17")));
    }
}
