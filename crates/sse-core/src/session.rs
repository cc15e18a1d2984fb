//! Live channel changes (`sse_session`, `sse_subscribe`): the session token,
//! the change request's form body, the messages workers exchange through
//! Redis to route a change to the worker that holds the stream, and the rule
//! that computes a stream's channels after a change.
//!
//! A change travels like this: the browser POSTs `session=<token>&add=..`
//! to any worker of any nginx; that worker evaluates the request's
//! `sse_user` and `sse_allow`, then, unless it holds the stream itself,
//! publishes a [`Change`] on the owner's node channel
//! ([`node_channel`]); the owner applies it with [`apply`] and publishes a
//! [`Answer`] on the sender's node channel.

use std::fmt;

use crate::channel::{is_reserved, ChannelError, ListRules};
use crate::envelope::{self, parse_id};
use crate::pattern::{Grants, Pattern};

/// The stream's first event on `sse_session` locations; data: the token.
pub const SESSION_EVENT: &[u8] = b"sse-session";
/// The event that follows an applied change; data: the channels now.
pub const CHANNELS_EVENT: &[u8] = b"sse-channels";
/// Largest change request body.
pub const MAX_BODY: usize = 16 * 1024;
/// Each worker's own reserved channel is this prefix + its node id.
pub const NODE_CHANNEL_PREFIX: &str = "sse:node:";

/// The worker's reserved channel, where changes for its streams and answers
/// to its forwarded changes arrive.
pub fn node_channel(node: u64) -> String {
    format!("{NODE_CHANNEL_PREFIX}{node:016x}")
}

/// What a session token names: the worker (`node`, random per worker
/// process), the stream within it, and the stream's secret (128 bits from
/// the kernel's CSPRNG). Text form: `<node:16 hex>.<stream>.<secret:32 hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub node: u64,
    pub stream: u64,
    pub secret: [u8; 16],
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}.{}.", self.node, self.stream)?;
        self.secret.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Token {
    // Never print the secret (logs, panics).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({:016x}.{}.…)", self.node, self.stream)
    }
}

impl Token {
    /// Parses the text form; `None` for anything else.
    pub fn parse(raw: &[u8]) -> Option<Token> {
        let mut parts = raw.split(|&b| b == b'.');
        let (node, stream, secret) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || node.len() != 16 || secret.len() != 32 {
            return None;
        }
        // from_str_radix would take a sign: only hex digits are a token.
        if !node.iter().chain(secret).all(u8::is_ascii_hexdigit) {
            return None;
        }
        let node = u64::from_str_radix(std::str::from_utf8(node).ok()?, 16).ok()?;
        let stream = parse_id(stream)?;
        let mut bytes = [0u8; 16];
        for (i, pair) in secret.chunks(2).enumerate() {
            bytes[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Token {
            node,
            stream,
            secret: bytes,
        })
    }

    /// Whether `other` is this token's secret, in time that does not depend
    /// on where they differ.
    pub fn secret_is(&self, other: &[u8; 16]) -> bool {
        self.secret
            .iter()
            .zip(other)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// A change request's body, parsed: `session`, `add`, `remove`,
/// `last_event_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeForm {
    pub session: Token,
    pub add: Vec<Pattern>,
    pub remove: Vec<Pattern>,
    pub since: Option<u64>,
}

/// Why a change request's body was refused (400). `Display` is the reason
/// the client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormError {
    /// A `%` not followed by two hex digits, or a field without `=`.
    Syntax,
    UnknownField(String),
    /// `session` or `last_event_id` given twice.
    Twice(&'static str),
    NoSession,
    BadToken,
    BadId(String),
    Channel(ChannelError),
    /// Neither `add` nor `remove` names anything.
    Nothing,
    AddedAndRemoved(String),
}

impl fmt::Display for FormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormError::Syntax => f.write_str("malformed form body"),
            FormError::UnknownField(k) => write!(f, "unknown field \"{}\"", k.escape_debug()),
            FormError::Twice(k) => write!(f, "\"{k}\" given twice"),
            FormError::NoSession => f.write_str("no session given"),
            FormError::BadToken => f.write_str("malformed session token"),
            FormError::BadId(id) => write!(f, "invalid last_event_id \"{}\"", id.escape_debug()),
            FormError::Channel(e) => e.fmt(f),
            FormError::Nothing => f.write_str("nothing to add or remove"),
            FormError::AddedAndRemoved(c) => write!(f, "\"{c}\" is both added and removed"),
        }
    }
}

impl std::error::Error for FormError {}

/// Parses an `application/x-www-form-urlencoded` change request body.
/// Channel lists are comma-separated, may repeat (`add=a&add=b`), and are
/// decoded once (form encoding); names are checked as on a stream's URL.
pub fn parse_form(body: &[u8]) -> Result<ChangeForm, FormError> {
    let mut session = None;
    let mut since = None;
    let mut seen_since = false;
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for field in body.split(|&b| b == b'&').filter(|f| !f.is_empty()) {
        let eq = field
            .iter()
            .position(|&b| b == b'=')
            .ok_or(FormError::Syntax)?;
        let (key, value) = (form_decode(&field[..eq])?, form_decode(&field[eq + 1..])?);
        match key.as_slice() {
            b"session" if session.is_some() => return Err(FormError::Twice("session")),
            b"session" => session = Some(Token::parse(&value).ok_or(FormError::BadToken)?),
            b"last_event_id" if seen_since => return Err(FormError::Twice("last_event_id")),
            // A Redis Cluster id (one position per channel) names no
            // position for a channel the stream does not have yet: such an
            // added channel starts as on a new stream.
            b"last_event_id" if crate::position::is_vector(&value) => seen_since = true,
            b"last_event_id" => {
                seen_since = true;
                since = Some(parse_id(&value).ok_or_else(|| {
                    FormError::BadId(String::from_utf8_lossy(&value).into_owned())
                })?)
            }
            b"add" => list_into(&value, &mut add)?,
            b"remove" => list_into(&value, &mut remove)?,
            _ => {
                return Err(FormError::UnknownField(
                    String::from_utf8_lossy(&key).into_owned(),
                ))
            }
        }
    }
    let session = session.ok_or(FormError::NoSession)?;
    if add.is_empty() && remove.is_empty() {
        return Err(FormError::Nothing);
    }
    if let Some(both) = add.iter().find(|a| remove.contains(a)) {
        return Err(FormError::AddedAndRemoved(both.to_string()));
    }
    Ok(ChangeForm {
        session,
        add,
        remove,
        since,
    })
}

/// Adds the names of one comma-separated list (an empty value adds none; an
/// empty item such as `a,,b` is an error, as on a stream's URL).
fn list_into(value: &[u8], out: &mut Vec<Pattern>) -> Result<(), FormError> {
    if value.is_empty() {
        return Ok(());
    }
    for item in value.split(|&b| b == b',') {
        let item = item.trim_ascii();
        let pattern = Pattern::parse(item).map_err(FormError::Channel)?;
        if is_reserved(item) {
            return Err(FormError::Channel(ChannelError::Reserved {
                name: pattern.to_string(),
            }));
        }
        if !out.contains(&pattern) {
            out.push(pattern);
        }
    }
    Ok(())
}

/// Form decoding: `+` is a space, `%XX` a byte.
fn form_decode(raw: &[u8]) -> Result<Vec<u8>, FormError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
                match (hex(raw.get(i + 1)), hex(raw.get(i + 2))) {
                    (Some(hi), Some(lo)) => out.push((hi << 4 | lo) as u8),
                    _ => return Err(FormError::Syntax),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Why a change cannot apply to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    /// 400: the result breaks the stream location's channel rules.
    Channel(ChannelError),
    /// 403: channels of the result the grants do not permit.
    NotAllowed(Vec<String>),
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::Channel(e) => e.fmt(f),
            ChangeError::NotAllowed(names) => write!(f, "not allowed: {}", names.join(", ")),
        }
    }
}

/// The channels of a stream after a change: `current` without `remove`, then
/// `add` (names already there and removals of absent names change nothing).
/// The result must follow the stream location's `rules` (patterns, overlap,
/// count) and, with `grants`, every subscription of it must be permitted;
/// otherwise nothing changes. An empty result is allowed.
pub fn apply(
    current: &[Pattern],
    add: &[Pattern],
    remove: &[Pattern],
    rules: ListRules,
    grants: Option<&Grants>,
) -> Result<Vec<Pattern>, ChangeError> {
    let mut result: Vec<Pattern> = current
        .iter()
        .filter(|p| !remove.contains(p))
        .cloned()
        .collect();
    for pattern in add {
        if result.contains(pattern) {
            continue;
        }
        let name = || pattern.to_string();
        if !pattern.is_concrete() && !rules.patterns {
            return Err(ChangeError::Channel(ChannelError::PatternNotAllowed {
                name: name(),
            }));
        }
        if is_reserved(pattern.as_bytes()) {
            return Err(ChangeError::Channel(ChannelError::Reserved {
                name: name(),
            }));
        }
        if let Some(other) = result.iter().find(|p| p.overlaps(pattern)) {
            return Err(ChangeError::Channel(ChannelError::Overlap {
                first: other.to_string(),
                second: name(),
            }));
        }
        result.push(pattern.clone());
    }
    if result.len() > rules.max {
        return Err(ChangeError::Channel(ChannelError::TooMany {
            count: result.len(),
            max: rules.max,
        }));
    }
    if let Some(grants) = grants {
        let refused: Vec<String> = result
            .iter()
            .filter(|p| !grants.permits(p))
            .map(Pattern::to_string)
            .collect();
        if !refused.is_empty() {
            return Err(ChangeError::NotAllowed(refused));
        }
    }
    Ok(result)
}

/// Comma-separated names, as in `sse-channels` and the 200 answer.
pub fn join(patterns: &[Pattern]) -> String {
    let names: Vec<&str> = patterns.iter().map(Pattern::as_str).collect();
    names.join(",")
}

/// A change forwarded to the worker that holds the stream:
/// `change from=<node> req=<n> session=<token> [user=U] [grants=a,b]
/// [add=a,b] [remove=c] [since=N]` (every value is a validated name or list,
/// so none contains a space). `grants` absent: the sender's location has no
/// `sse_allow` (the stream keeps its own); present and empty: nothing granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub from: u64,
    pub request: u64,
    pub session: Token,
    pub user: Option<Box<[u8]>>,
    pub grants: Option<Grants>,
    pub add: Vec<Pattern>,
    pub remove: Vec<Pattern>,
    pub since: Option<u64>,
}

/// The owner's answer to a forwarded change: `answer <req> <status>\n<body>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub request: u64,
    pub status: u16,
    pub body: Vec<u8>,
}

/// A message on a node channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeMessage {
    Change(Change),
    Answer(Answer),
}

impl Change {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "change from={:016x} req={} session={}",
            self.from, self.request, self.session
        );
        if let Some(user) = &self.user {
            out.push_str(" user=");
            out.push_str(&String::from_utf8_lossy(user));
        }
        if let Some(grants) = &self.grants {
            out.push_str(" grants=");
            out.push_str(&join(grants.patterns()));
        }
        for (key, list) in [("add", &self.add), ("remove", &self.remove)] {
            if !list.is_empty() {
                out.push_str(&format!(" {key}={}", join(list)));
            }
        }
        if let Some(since) = self.since {
            out.push_str(&format!(" since={since}"));
        }
        out.into_bytes()
    }
}

impl Answer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("answer {} {}\n", self.request, self.status).into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Why a node channel message was not understood (logged and skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMessageError(pub String);

impl fmt::Display for NodeMessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(what: &str) -> NodeMessageError {
    NodeMessageError(what.to_string())
}

/// Parses a message published on a node channel.
pub fn parse_node_message(payload: &[u8]) -> Result<NodeMessage, NodeMessageError> {
    if let Some(rest) = payload.strip_prefix(b"answer ") {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let mut head = rest[..end].split(|&b| b == b' ');
        let request = head
            .next()
            .and_then(parse_id)
            .ok_or_else(|| bad("answer without a request number"))?;
        let status = head
            .next()
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (100..600).contains(s))
            .ok_or_else(|| bad("answer without a status"))?;
        let body = rest.get(end + 1..).unwrap_or_default().to_vec();
        return Ok(NodeMessage::Answer(Answer {
            request,
            status,
            body,
        }));
    }
    let rest = payload
        .strip_prefix(b"change ")
        .ok_or_else(|| bad("unknown node message"))?;
    let (mut from, mut request, mut session) = (None, None, None);
    let mut change = Change {
        from: 0,
        request: 0,
        session: Token {
            node: 0,
            stream: 0,
            secret: [0; 16],
        },
        user: None,
        grants: None,
        add: Vec::new(),
        remove: Vec::new(),
        since: None,
    };
    for field in rest.split(|&b| b == b' ').filter(|f| !f.is_empty()) {
        let eq = field
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("field without '='"))?;
        let (key, value) = (&field[..eq], &field[eq + 1..]);
        match key {
            b"from" => {
                from = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| v.len() == 16)
                    .and_then(|v| u64::from_str_radix(v, 16).ok())
            }
            b"req" => request = parse_id(value),
            b"session" => session = Token::parse(value),
            b"user" if envelope::valid_user(value) => change.user = Some(value.into()),
            b"grants" => {
                let (grants, invalid) = Grants::parse(&[value]);
                if !invalid.is_empty() {
                    return Err(bad("invalid grants"));
                }
                change.grants = Some(grants);
            }
            b"add" => list_into(value, &mut change.add).map_err(|_| bad("invalid add list"))?,
            b"remove" => {
                list_into(value, &mut change.remove).map_err(|_| bad("invalid remove list"))?
            }
            b"since" => change.since = Some(parse_id(value).ok_or_else(|| bad("invalid since"))?),
            _ => return Err(bad("unknown or invalid field")),
        }
    }
    change.from = from.ok_or_else(|| bad("change without a sender"))?;
    change.request = request.ok_or_else(|| bad("change without a request number"))?;
    change.session = session.ok_or_else(|| bad("change without a session"))?;
    Ok(NodeMessage::Change(change))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s.as_bytes()).unwrap()
    }

    fn ps(list: &[&str]) -> Vec<Pattern> {
        list.iter().map(|s| p(s)).collect()
    }

    fn token() -> Token {
        Token {
            node: 0x0123_4567_89ab_cdef,
            stream: 42,
            secret: *b"0123456789abcdef",
        }
    }

    const RULES: ListRules = ListRules {
        max: 3,
        patterns: true,
    };

    #[test]
    fn token_round_trips_and_refuses_look_alikes() {
        let t = token();
        let text = t.to_string();
        assert_eq!(text, "0123456789abcdef.42.30313233343536373839616263646566");
        assert_eq!(Token::parse(text.as_bytes()), Some(t));
        assert!(!format!("{t:?}").contains("3031"), "Debug hides the secret");
        for bad in [
            "",
            "0123456789abcdef.42",
            "0123456789abcdef.42.3031323334353637383961626364656",
            "0123456789abcdef.42.3031323334353637383961626364656g",
            "0123456789abcde.42.30313233343536373839616263646566",
            "+123456789abcdef.42.30313233343536373839616263646566",
            "0123456789abcdef.042.30313233343536373839616263646566",
            "0123456789abcdef..30313233343536373839616263646566",
            "0123456789abcdef.42.30313233343536373839616263646566.x",
        ] {
            assert_eq!(Token::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn secrets_compare_exactly() {
        let t = token();
        assert!(t.secret_is(b"0123456789abcdef"));
        assert!(!t.secret_is(b"0123456789abcdeF"));
        assert!(!t.secret_is(&[0; 16]));
    }

    #[test]
    fn form_bodies() {
        let tok = token().to_string();
        let form = parse_form(
            format!("session={tok}&add=a%3Ab,c&remove=d&add=e&last_event_id=7").as_bytes(),
        )
        .unwrap();
        assert_eq!(form.session, token());
        assert_eq!(form.add, ps(&["a:b", "c", "e"]));
        assert_eq!(form.remove, ps(&["d"]));
        assert_eq!(form.since, Some(7));

        let only_remove = parse_form(format!("remove=x&session={tok}&add=").as_bytes()).unwrap();
        assert!(only_remove.add.is_empty());
        assert_eq!(only_remove.since, None);

        let cases: &[(&str, FormError)] = &[
            ("add=a", FormError::NoSession),
            ("session=abc&add=a", FormError::BadToken),
            ("session", FormError::Syntax),
            ("session=%zz", FormError::Syntax),
        ];
        for (body, want) in cases {
            assert_eq!(parse_form(body.as_bytes()).unwrap_err(), *want, "{body}");
        }
        let with = |rest: &str| parse_form(format!("session={tok}&{rest}").as_bytes());
        assert_eq!(with("remove=").unwrap_err(), FormError::Nothing);
        assert_eq!(
            with("add=a&remove=a").unwrap_err(),
            FormError::AddedAndRemoved("a".into())
        );
        assert_eq!(
            with("add=a&x=1").unwrap_err(),
            FormError::UnknownField("x".into())
        );
        assert_eq!(
            with("add=a&session=1").unwrap_err(),
            FormError::Twice("session")
        );
        assert_eq!(
            with("add=a&last_event_id=07").unwrap_err(),
            FormError::BadId("07".into())
        );
        assert!(matches!(
            with("add=sse:control").unwrap_err(),
            FormError::Channel(ChannelError::Reserved { .. })
        ));
        assert!(matches!(
            with("add=a,,b").unwrap_err(),
            FormError::Channel(ChannelError::Empty)
        ));
        assert!(matches!(
            with("add=a+b").unwrap_err(),
            FormError::Channel(ChannelError::InvalidByte { .. })
        ));
    }

    #[test]
    fn apply_adds_removes_and_keeps_order() {
        let now = ps(&["a", "b"]);
        let got = apply(&now, &ps(&["c", "a"]), &ps(&["b", "zz"]), RULES, None).unwrap();
        assert_eq!(got, ps(&["a", "c"]));
        // Everything removed: allowed.
        assert!(apply(&now, &[], &now, RULES, None).unwrap().is_empty());
    }

    #[test]
    fn apply_is_all_or_nothing_with_reasons() {
        let now = ps(&["dash:*", "b"]);
        let overlap = apply(&now, &ps(&["dash:7"]), &[], RULES, None).unwrap_err();
        assert!(matches!(
            overlap,
            ChangeError::Channel(ChannelError::Overlap { .. })
        ));
        // Removing the pattern in the same change makes room.
        assert_eq!(
            apply(&now, &ps(&["dash:7"]), &ps(&["dash:*"]), RULES, None).unwrap(),
            ps(&["b", "dash:7"])
        );
        let too_many = apply(&now, &ps(&["c", "d"]), &[], RULES, None).unwrap_err();
        assert_eq!(
            too_many,
            ChangeError::Channel(ChannelError::TooMany { count: 4, max: 3 })
        );
        let no_patterns = ListRules {
            max: 3,
            patterns: false,
        };
        assert!(matches!(
            apply(&ps(&["b"]), &ps(&["x:*"]), &[], no_patterns, None).unwrap_err(),
            ChangeError::Channel(ChannelError::PatternNotAllowed { .. })
        ));
    }

    #[test]
    fn apply_checks_the_whole_result_against_the_grants() {
        let (grants, _) = Grants::parse(&["logs:w1:*, dash:7"]);
        let now = ps(&["logs:w1:f1"]);
        assert_eq!(
            apply(
                &now,
                &ps(&["dash:*", "logs:w1:f2"]),
                &[],
                RULES,
                Some(&grants)
            )
            .unwrap(),
            ps(&["logs:w1:f1", "dash:*", "logs:w1:f2"])
        );
        assert_eq!(
            apply(
                &now,
                &ps(&["dash:8", "logs:w2:f1"]),
                &[],
                RULES,
                Some(&grants)
            )
            .unwrap_err(),
            ChangeError::NotAllowed(vec!["dash:8".into(), "logs:w2:f1".into()])
        );
        // Grants that shrank since the stream opened: a kept channel is refused too.
        let (fewer, _) = Grants::parse(&["dash:7"]);
        assert_eq!(
            apply(&now, &ps(&["dash:7"]), &[], RULES, Some(&fewer)).unwrap_err(),
            ChangeError::NotAllowed(vec!["logs:w1:f1".into()])
        );
        let nothing = Grants::default();
        assert!(apply(&now, &[], &now, RULES, Some(&nothing))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn node_messages_round_trip() {
        let (grants, _) = Grants::parse(&["logs:*, dash:7"]);
        let change = Change {
            from: 0xfeed,
            request: 9,
            session: token(),
            user: Some(b"u42".as_slice().into()),
            grants: Some(grants),
            add: ps(&["logs:a", "dash:7"]),
            remove: ps(&["logs:b"]),
            since: Some(1041),
        };
        let wire = change.encode();
        assert_eq!(
            parse_node_message(&wire).unwrap(),
            NodeMessage::Change(change.clone())
        );
        let bare = Change {
            user: None,
            grants: None,
            add: Vec::new(),
            since: None,
            ..change
        };
        assert_eq!(
            parse_node_message(&bare.encode()).unwrap(),
            NodeMessage::Change(bare.clone())
        );
        let empty_grants = Change {
            grants: Some(Grants::default()),
            ..bare
        };
        assert_eq!(
            parse_node_message(&empty_grants.encode()).unwrap(),
            NodeMessage::Change(empty_grants)
        );
        let answer = Answer {
            request: 9,
            status: 403,
            body: b"sse: not allowed: a, b\n".to_vec(),
        };
        assert_eq!(
            parse_node_message(&answer.encode()).unwrap(),
            NodeMessage::Answer(answer)
        );
    }

    #[test]
    fn bad_node_messages_are_errors() {
        let tok = token().to_string();
        for bad in [
            "".to_string(),
            "revoke u1".to_string(),
            "answer x 200\n".to_string(),
            "answer 1 20\n".to_string(),
            format!("change req=1 session={tok}"),
            format!("change from=000000000000feed session={tok}"),
            format!("change from=000000000000feed req=1 session={tok} user=a::b"),
            format!("change from=000000000000feed req=1 session={tok} add=sse:x"),
            format!("change from=000000000000feed req=1 session={tok} grants=a*"),
            format!("change from=000000000000feed req=1 session={tok} what=1"),
        ] {
            assert!(parse_node_message(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
