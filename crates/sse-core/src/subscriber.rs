//! The conversation on a worker's subscriber connection: which reply
//! answers which command, and what each reply means.
//!
//! Every command the worker sends on that connection gets exactly one reply
//! (each SUBSCRIBE names one key, see below), so replies are matched to
//! commands in order. Published messages (`message` / `pmessage`) interleave
//! freely and are not replies.
//!
//! Why one key per (P)SUBSCRIBE: Redis refuses a whole multi-key SUBSCRIBE
//! when one key is outside the user's ACL (`-NOPERM`), and the error does not
//! say which key. With one key per command, a refusal names exactly the key
//! whose subscribers must be told, and every other subscription stands.
//!
//! A connection counts as up only when the `Ready` PING sent after the first
//! batch of commands is answered: a server that accepts TCP and then refuses
//! (wrong password, ACL, a proxy answering nonsense) never looks connected.

use std::collections::VecDeque;
use std::fmt;

use crate::registry;
use crate::resp::{self, Value};

/// What a PING on the subscriber connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    /// The periodic liveness check.
    Keepalive,
    /// Sent after the first batch of commands: its answer means the
    /// connection works and every initial subscription was answered.
    Ready,
    /// A barrier: Redis has processed every command sent before it.
    Barrier(u64),
}

/// A command sent on the subscriber connection, awaiting its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Auth,
    Subscribe(Box<[u8]>),
    Unsubscribe(Box<[u8]>),
    Ping(Ping),
}

/// What one value read from the connection means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A published message, received through `subscription` (the channel,
    /// or the glob of the pattern it matched).
    Message {
        subscription: &'a [u8],
        channel: &'a [u8],
        payload: &'a [u8],
    },
    /// A command was answered as expected; nothing to do.
    Done,
    /// Redis refused to subscribe `key` (ACL, ...): only its subscribers
    /// are affected.
    Refused { key: Box<[u8]>, reason: &'a [u8] },
    /// The answer to a PING.
    Pong(Ping),
    /// Redis Cluster: this node does not serve `key`'s slot (`-MOVED`, or
    /// the cluster is failing over): subscribe it where the topology says.
    Moved { key: Box<[u8]> },
    /// Redis Cluster: the node dropped the sharded subscription to `key`
    /// (its slot moved to another node): subscribe it there.
    Dropped { key: Box<[u8]> },
}

/// The connection cannot go on: drop it and reconnect with backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fatal {
    /// AUTH was refused (wrong password, unknown user).
    AuthRefused(String),
    /// Redis answered a command with an error that makes the connection
    /// useless (a PING or UNSUBSCRIBE refused).
    Refused { command: String, reason: String },
    /// A reply that is not what the command gets from Redis.
    Unexpected { command: String, reply: String },
    /// A reply arrived when no command was waiting for one.
    Unsolicited(String),
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::AuthRefused(reason) => write!(f, "AUTH refused: \"{reason}\""),
            Fatal::Refused { command, reason } => write!(f, "{command} refused: \"{reason}\""),
            Fatal::Unexpected { command, reply } => {
                write!(f, "unexpected reply to {command}: {reply}")
            }
            Fatal::Unsolicited(reply) => write!(f, "unexpected reply to no command: {reply}"),
        }
    }
}

impl std::error::Error for Fatal {}

/// The commands in flight on one subscriber connection, oldest first.
#[derive(Debug, Default)]
pub struct Session {
    sent: VecDeque<Sent>,
    /// Redis Cluster: channels are subscribed with SSUBSCRIBE on the node
    /// serving their slot (sharded pub/sub).
    sharded: bool,
}

impl Session {
    /// A session of sharded pub/sub (SSUBSCRIBE, Redis Cluster).
    pub fn sharded() -> Self {
        Session {
            sent: VecDeque::new(),
            sharded: true,
        }
    }

    /// A new connection: nothing in flight.
    pub fn reset(&mut self) {
        self.sent.clear();
    }

    /// Commands awaiting a reply.
    pub fn in_flight(&self) -> usize {
        self.sent.len()
    }

    /// Appends `AUTH [user] password` to `out`.
    pub fn auth(&mut self, out: &mut Vec<u8>, args: &[&[u8]]) {
        let mut command: Vec<&[u8]> = vec![b"AUTH"];
        command.extend_from_slice(args);
        resp::encode_command(out, &command);
        self.sent.push_back(Sent::Auth);
    }

    /// Appends SUBSCRIBE (or PSUBSCRIBE for a pattern glob) of each key, one
    /// command per key.
    pub fn subscribe(&mut self, out: &mut Vec<u8>, keys: &[&[u8]]) {
        for &key in keys {
            let name: &[u8] = if self.sharded {
                b"SSUBSCRIBE"
            } else if registry::is_pattern_key(key) {
                b"PSUBSCRIBE"
            } else {
                b"SUBSCRIBE"
            };
            resp::encode_command(out, &[name, key]);
            self.sent.push_back(Sent::Subscribe(key.into()));
        }
    }

    /// Appends UNSUBSCRIBE (or PUNSUBSCRIBE) of each key, one command per key.
    pub fn unsubscribe(&mut self, out: &mut Vec<u8>, keys: &[&[u8]]) {
        for &key in keys {
            let name: &[u8] = if self.sharded {
                b"SUNSUBSCRIBE"
            } else if registry::is_pattern_key(key) {
                b"PUNSUBSCRIBE"
            } else {
                b"UNSUBSCRIBE"
            };
            resp::encode_command(out, &[name, key]);
            self.sent.push_back(Sent::Unsubscribe(key.into()));
        }
    }

    /// Appends a PING.
    pub fn ping(&mut self, out: &mut Vec<u8>, ping: Ping) {
        resp::encode_command(out, &[b"PING"]);
        self.sent.push_back(Sent::Ping(ping));
    }

    /// Reads one value.
    pub fn reply<'a>(&mut self, value: &Value<'a>) -> Result<Reply<'a>, Fatal> {
        if let Some(message) = message(value) {
            return Ok(message);
        }
        if let Some(key) = dropped(value) {
            // A slot that moved away: Redis unsubscribes its channels on its
            // own. Unless it answers our own SUNSUBSCRIBE of that key.
            let ours = matches!(self.sent.front(), Some(Sent::Unsubscribe(k)) if **k == *key);
            if !ours {
                return Ok(Reply::Dropped { key: key.into() });
            }
        }
        let Some(sent) = self.sent.pop_front() else {
            return Err(Fatal::Unsolicited(describe(value)));
        };
        let unexpected = |command: String| Fatal::Unexpected {
            command,
            reply: describe(value),
        };
        match (sent, value) {
            (Sent::Auth, Value::Error(e)) => Err(Fatal::AuthRefused(lossy(e))),
            (Sent::Auth, Value::Simple(_)) => Ok(Reply::Done),
            (Sent::Auth, _) => Err(unexpected("AUTH".into())),
            (Sent::Subscribe(key), Value::Error(reason)) if refuses_channel(reason) => {
                Ok(Reply::Refused { key, reason })
            }
            (Sent::Subscribe(key), Value::Error(reason)) if self.sharded && rerouted(reason) => {
                Ok(Reply::Moved { key })
            }
            (Sent::Subscribe(key), Value::Error(reason)) => Err(Fatal::Refused {
                command: format!("SUBSCRIBE \"{}\"", lossy(&key)),
                reason: lossy(reason),
            }),
            (Sent::Subscribe(key), _) => {
                if confirms(value, &[b"subscribe", b"psubscribe", b"ssubscribe"], &key) {
                    Ok(Reply::Done)
                } else {
                    Err(unexpected(format!("SUBSCRIBE \"{}\"", lossy(&key))))
                }
            }
            // The node no longer serves that slot: nothing to unsubscribe.
            (Sent::Unsubscribe(_), Value::Error(reason)) if self.sharded && rerouted(reason) => {
                Ok(Reply::Done)
            }
            (Sent::Unsubscribe(key), Value::Error(reason)) => Err(Fatal::Refused {
                command: format!("UNSUBSCRIBE \"{}\"", lossy(&key)),
                reason: lossy(reason),
            }),
            (Sent::Unsubscribe(key), _) => {
                if confirms(
                    value,
                    &[b"unsubscribe", b"punsubscribe", b"sunsubscribe"],
                    &key,
                ) {
                    Ok(Reply::Done)
                } else {
                    Err(unexpected(format!("UNSUBSCRIBE \"{}\"", lossy(&key))))
                }
            }
            (Sent::Ping(_), Value::Error(reason)) => Err(Fatal::Refused {
                command: "PING".into(),
                reason: lossy(reason),
            }),
            (Sent::Ping(ping), _) => {
                // ["pong", ""] while subscribed; +PONG if no subscription
                // stands (every SUBSCRIBE refused).
                let pong = match value {
                    Value::Simple(b"PONG") => true,
                    Value::Array(Some(items)) => {
                        items.len() == 2 && items[0].as_bytes() == Some(b"pong")
                    }
                    _ => false,
                };
                if pong {
                    Ok(Reply::Pong(ping))
                } else {
                    Err(unexpected("PING".into()))
                }
            }
        }
    }
}

/// Whether an error answering a SUBSCRIBE refuses that channel alone (an
/// ACL without it) rather than the connection (no AUTH, no right to
/// SUBSCRIBE at all, loading...), which must be dropped and retried.
fn refuses_channel(reason: &[u8]) -> bool {
    let reason = String::from_utf8_lossy(reason).to_ascii_lowercase();
    reason.starts_with("noperm") && reason.contains("channel")
}

/// Whether an error answering an SSUBSCRIBE means "not here, not now"
/// (the topology changed or is changing) rather than a refusal.
fn rerouted(reason: &[u8]) -> bool {
    [&b"MOVED "[..], b"ASK ", b"CLUSTERDOWN", b"TRYAGAIN"]
        .iter()
        .any(|p| reason.starts_with(p))
}

/// The key of a `sunsubscribe` notification, if `value` is one.
fn dropped<'a>(value: &Value<'a>) -> Option<&'a [u8]> {
    let Value::Array(Some(items)) = value else {
        return None;
    };
    match items.as_slice() {
        [kind, key, Value::Integer(_)] if kind.as_bytes() == Some(b"sunsubscribe") => {
            key.as_bytes()
        }
        _ => None,
    }
}

/// A published message, if `value` is one.
fn message<'a>(value: &Value<'a>) -> Option<Reply<'a>> {
    let Value::Array(Some(items)) = value else {
        return None;
    };
    let bytes: Vec<Option<&'a [u8]>> = items.iter().map(Value::as_bytes).collect();
    match bytes.as_slice() {
        [Some(b"message" | b"smessage"), Some(channel), Some(payload)] => Some(Reply::Message {
            subscription: channel,
            channel,
            payload,
        }),
        [Some(b"pmessage"), Some(pattern), Some(channel), Some(payload)] => Some(Reply::Message {
            subscription: pattern,
            channel,
            payload,
        }),
        _ => None,
    }
}

/// Whether `value` is `[kind, key, count]` with `kind` one of `kinds`.
fn confirms(value: &Value<'_>, kinds: &[&[u8]], key: &[u8]) -> bool {
    let Value::Array(Some(items)) = value else {
        return false;
    };
    matches!(items.as_slice(), [kind, name, Value::Integer(_)]
        if kind.as_bytes().is_some_and(|k| kinds.contains(&k)) && name.as_bytes() == Some(key))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A short description of a reply for log lines.
fn describe(value: &Value<'_>) -> String {
    match value {
        Value::Simple(s) => format!("+{}", lossy(s)).escape_debug().to_string(),
        Value::Error(e) => format!("-{}", lossy(e)).escape_debug().to_string(),
        Value::Integer(i) => format!(":{i}"),
        Value::Bulk(None) => "a null bulk string".into(),
        Value::Bulk(Some(b)) => format!("a bulk string of {} bytes", b.len()),
        Value::Array(None) => "a null array".into(),
        Value::Array(Some(items)) => match items.first().and_then(Value::as_bytes) {
            Some(kind) => format!(
                "an array of {} (\"{}\", ...)",
                items.len(),
                lossy(kind).escape_debug()
            ),
            None => format!("an array of {}", items.len()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(items: Vec<Value<'static>>) -> Value<'static> {
        Value::Array(Some(items))
    }

    fn bulk(b: &'static [u8]) -> Value<'static> {
        Value::Bulk(Some(b))
    }

    fn confirmation(kind: &'static [u8], key: &'static [u8]) -> Value<'static> {
        arr(vec![bulk(kind), bulk(key), Value::Integer(1)])
    }

    #[test]
    fn one_command_per_key_and_the_right_verb() {
        let mut s = Session::default();
        let mut out = Vec::new();
        s.subscribe(&mut out, &[b"a", b"d:*"]);
        s.unsubscribe(&mut out, &[b"a"]);
        assert_eq!(
            out,
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n*2\r\n$10\r\nPSUBSCRIBE\r\n$3\r\nd:*\r\n\
              *2\r\n$11\r\nUNSUBSCRIBE\r\n$1\r\na\r\n"
        );
        assert_eq!(s.in_flight(), 3);
    }

    #[test]
    fn replies_match_commands_in_order_and_messages_interleave() {
        let mut s = Session::default();
        let mut out = Vec::new();
        s.auth(&mut out, &[b"pw"]);
        s.subscribe(&mut out, &[b"a", b"d:*"]);
        s.ping(&mut out, Ping::Ready);
        assert_eq!(s.reply(&Value::Simple(b"OK")), Ok(Reply::Done));
        assert_eq!(s.reply(&confirmation(b"subscribe", b"a")), Ok(Reply::Done));
        let msg = arr(vec![bulk(b"message"), bulk(b"a"), bulk(b"hi")]);
        assert_eq!(
            s.reply(&msg),
            Ok(Reply::Message {
                subscription: b"a",
                channel: b"a",
                payload: b"hi"
            })
        );
        assert_eq!(
            s.reply(&confirmation(b"psubscribe", b"d:*")),
            Ok(Reply::Done)
        );
        let pong = arr(vec![bulk(b"pong"), bulk(b"")]);
        assert_eq!(s.reply(&pong), Ok(Reply::Pong(Ping::Ready)));
        assert_eq!(s.in_flight(), 0);
        assert!(matches!(s.reply(&pong), Err(Fatal::Unsolicited(_))));
    }

    #[test]
    fn pattern_messages_name_their_pattern_and_bad_ones_are_not_messages() {
        let raw = b"*4\r\n$8\r\npmessage\r\n$3\r\nd:*\r\n$3\r\nd:7\r\n$2\r\nhi\r\n";
        let (v, _) = resp::parse(raw).unwrap().unwrap();
        let mut s = Session::default();
        assert_eq!(
            s.reply(&v),
            Ok(Reply::Message {
                subscription: b"d:*",
                channel: b"d:7",
                payload: b"hi"
            })
        );
        // Malformed messages are not messages: with no command waiting,
        // they are replies to nothing (the connection is dropped).
        for raw in [
            &b"*2\r\n$7\r\nmessage\r\n$1\r\na\r\n"[..],
            b"*3\r\n$7\r\nmessage\r\n:1\r\n$1\r\nx\r\n",
            b"*0\r\n",
        ] {
            let (v, _) = resp::parse(raw).unwrap().unwrap();
            assert!(matches!(s.reply(&v), Err(Fatal::Unsolicited(_))), "{raw:?}");
        }
    }

    #[test]
    fn a_refused_subscription_names_its_key_and_the_rest_stands() {
        let mut s = Session::default();
        let mut out = Vec::new();
        s.subscribe(&mut out, &[b"fz1", b"other", b"fz2"]);
        assert_eq!(
            s.reply(&confirmation(b"subscribe", b"fz1")),
            Ok(Reply::Done)
        );
        let acl =
            b"NOPERM this user has no permissions to access one of the channels used as arguments";
        assert_eq!(
            s.reply(&Value::Error(acl)),
            Ok(Reply::Refused {
                key: (*b"other").into(),
                reason: acl
            })
        );
        assert_eq!(
            s.reply(&confirmation(b"subscribe", b"fz2")),
            Ok(Reply::Done)
        );
    }

    #[test]
    fn wrong_answers_are_fatal() {
        let mut s = Session::default();
        let mut out = Vec::new();
        s.auth(&mut out, &[b"bad"]);
        assert!(matches!(
            s.reply(&Value::Error(b"WRONGPASS")),
            Err(Fatal::AuthRefused(_))
        ));

        // A server that says +OK to everything never looks subscribed.
        s.reset();
        s.subscribe(&mut out, &[b"a"]);
        let err = s.reply(&Value::Simple(b"OK")).unwrap_err();
        assert!(err.to_string().contains("SUBSCRIBE \"a\""), "{err}");

        // A confirmation for another key is not ours.
        s.reset();
        s.subscribe(&mut out, &[b"a"]);
        assert!(matches!(
            s.reply(&confirmation(b"subscribe", b"b")),
            Err(Fatal::Unexpected { .. })
        ));

        // Errors that refuse the connection, not one channel, are fatal.
        for reason in [
            &b"NOAUTH Authentication required."[..],
            b"NOPERM this user has no permissions to run the 'subscribe' command",
            b"LOADING Redis is loading the dataset in memory",
        ] {
            s.reset();
            s.subscribe(&mut out, &[b"a"]);
            assert!(
                matches!(s.reply(&Value::Error(reason)), Err(Fatal::Refused { .. })),
                "{}",
                String::from_utf8_lossy(reason)
            );
        }

        s.reset();
        s.ping(&mut out, Ping::Keepalive);
        assert!(matches!(
            s.reply(&Value::Error(b"LOADING")),
            Err(Fatal::Refused { .. })
        ));
    }

    #[test]
    fn pong_outside_subscribe_mode_and_barriers() {
        let mut s = Session::default();
        let mut out = Vec::new();
        s.ping(&mut out, Ping::Barrier(7));
        s.ping(&mut out, Ping::Keepalive);
        assert_eq!(
            s.reply(&Value::Simple(b"PONG")),
            Ok(Reply::Pong(Ping::Barrier(7)))
        );
        assert_eq!(
            s.reply(&arr(vec![bulk(b"pong"), bulk(b"")])),
            Ok(Reply::Pong(Ping::Keepalive))
        );
    }

    #[test]
    fn sharded_sessions_follow_the_cluster() {
        let mut s = Session::sharded();
        let mut out = Vec::new();
        s.subscribe(&mut out, &[b"a", b"b", b"c"]);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("SSUBSCRIBE").count(), 3, "{text}");
        // Confirmed, moved, and a cluster failing over.
        assert_eq!(s.reply(&confirmation(b"ssubscribe", b"a")), Ok(Reply::Done));
        assert_eq!(
            s.reply(&Value::Error(b"MOVED 15495 127.0.0.1:7002")),
            Ok(Reply::Moved {
                key: b"b".as_slice().into()
            })
        );
        assert_eq!(
            s.reply(&Value::Error(b"CLUSTERDOWN The cluster is down")),
            Ok(Reply::Moved {
                key: b"c".as_slice().into()
            })
        );
        // Sharded messages.
        assert_eq!(
            s.reply(&arr(vec![bulk(b"smessage"), bulk(b"a"), bulk(b"hi")])),
            Ok(Reply::Message {
                subscription: b"a",
                channel: b"a",
                payload: b"hi"
            })
        );
        // The slot of "a" moved: Redis unsubscribes it on its own.
        assert_eq!(
            s.reply(&confirmation(b"sunsubscribe", b"a")),
            Ok(Reply::Dropped {
                key: b"a".as_slice().into()
            })
        );
        // Our own SUNSUBSCRIBE is answered as such.
        out.clear();
        s.unsubscribe(&mut out, &[b"a"]);
        assert!(String::from_utf8_lossy(&out).contains("SUNSUBSCRIBE"));
        assert_eq!(
            s.reply(&confirmation(b"sunsubscribe", b"a")),
            Ok(Reply::Done)
        );
        assert_eq!(s.in_flight(), 0);
        // Outside cluster mode a MOVED is not expected: fatal.
        let mut plain = Session::default();
        plain.subscribe(&mut out, &[b"x"]);
        assert!(plain.reply(&Value::Error(b"MOVED 1 h:1")).is_err());
    }
}
