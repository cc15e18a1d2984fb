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

/// Finds where the value at the start of a growing buffer ends, remembering
/// how far it got, so that a reply arriving in many reads costs one pass.
///
/// [`parse`] starts over from the first byte on every call: fed the buffer
/// after every socket read, a large reply (say a long XRANGE) is re-parsed
/// once per read, which is quadratic in its size. A `Scanner` instead keeps
/// its position and the element counts of the arrays open there, and each
/// call looks only at the bytes that arrived since the previous one (bulk
/// payloads are skipped over, not read). Once it reports the value's length,
/// one [`parse`] of exactly those bytes builds the [`Value`]:
///
/// ```
/// use sse_core::resp::{parse, Scanner};
///
/// let reply = b"*2\r\n$5\r\nhello\r\n:7\r\n:8\r\n";
/// let mut scanner = Scanner::new();
/// let mut buf = Vec::new();
/// let mut len = None;
/// for piece in reply.chunks(3) {
///     buf.extend_from_slice(piece); // a socket read
///     len = scanner.scan(&buf).unwrap();
///     if len.is_some() {
///         break;
///     }
/// }
/// let len = len.unwrap();
/// let (value, used) = parse(&buf[..len]).unwrap().unwrap();
/// assert_eq!(used, len);
/// assert_eq!(value.as_bytes(), None); // the array
/// // What follows is the start of the next value: the caller drains the
/// // first `len` bytes and goes on scanning.
/// assert!(b":8\r\n".starts_with(&buf[len..]));
/// ```
///
/// Contract: between two calls the buffer may only grow at its end; its
/// first byte is the first byte of the value being scanned. When the caller
/// consumes a value (or drops its buffer), the next call must get a buffer
/// that starts at the next value. [`Scanner::scan`] resets the scanner
/// itself when it returns a length or an error; [`Scanner::reset`] is for a
/// caller that throws its buffer away (reconnection). A buffer shorter than
/// at the previous call is taken as a new one and scanned from the start.
///
/// The result of each call is the one [`parse`] would give on the same
/// buffer: `Some(len)` where it gives `Some((_, len))`, `None` where it
/// gives `None`, and the same error (same limits: nesting, bulk and array
/// lengths, header line length, malformed lines).
#[derive(Debug, Clone, Default)]
pub struct Scanner {
    /// Start of the item being scanned (its type byte).
    pos: usize,
    /// Bytes after the type byte already searched for the CRLF that ends the
    /// item's header line.
    searched: usize,
    /// Set once a bulk string's header is read: where its payload ends
    /// (the CRLF is expected there).
    bulk_end: Option<usize>,
    /// Elements still expected by each array open at `pos`, innermost last;
    /// its length is the depth of the item at `pos`.
    remaining: Vec<usize>,
    /// Length of the buffer at the previous call.
    seen: usize,
    /// Bytes examined since the scanner was created (linearity test).
    #[cfg(test)]
    examined: usize,
}

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets any partly scanned value: the next call scans its buffer from
    /// the first byte.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.searched = 0;
        self.bulk_end = None;
        self.remaining.clear();
        self.seen = 0;
    }

    /// Returns `Some(len)` when `buf` starts with one complete value of `len`
    /// bytes (the scanner is then reset, ready for the next value), `None`
    /// if more bytes are needed. See the type's documentation for the
    /// contract on `buf`.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        if buf.len() < self.seen {
            self.reset();
        }
        self.seen = buf.len();
        let result = self.advance(buf);
        if !matches!(result, Ok(None)) {
            self.reset();
        }
        result
    }

    /// The steps of [`parse_at`], in the same order, one item at a time.
    fn advance(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        loop {
            let end = match self.bulk_end {
                Some(end) => {
                    let Some(terminator) = buf.get(end..end + 2) else {
                        return Ok(None);
                    };
                    self.count(2);
                    if terminator != b"\r\n" {
                        return Err(ProtocolError("bulk string not terminated by CRLF"));
                    }
                    self.bulk_end = None;
                    end + 2
                }
                None => {
                    if self.remaining.len() > MAX_DEPTH {
                        return Err(ProtocolError("nesting too deep"));
                    }
                    let Some(&kind) = buf.get(self.pos) else {
                        return Ok(None);
                    };
                    let Some((line, after)) = self.line(buf)? else {
                        return Ok(None);
                    };
                    match kind {
                        b'+' | b'-' => after,
                        b':' => {
                            parse_int(line)?;
                            after
                        }
                        b'$' => {
                            let len = parse_int(line)?;
                            if len == -1 {
                                after
                            } else {
                                let len = usize::try_from(len)
                                    .map_err(|_| ProtocolError("negative bulk length"))?;
                                if len > MAX_BULK_LEN {
                                    return Err(ProtocolError("bulk string too long"));
                                }
                                self.bulk_end = Some(after + len);
                                continue;
                            }
                        }
                        b'*' => {
                            let len = parse_int(line)?;
                            if len == -1 {
                                after
                            } else {
                                let len = usize::try_from(len)
                                    .map_err(|_| ProtocolError("negative array length"))?;
                                if len > MAX_ARRAY_LEN {
                                    return Err(ProtocolError("array too long"));
                                }
                                if len == 0 {
                                    after
                                } else {
                                    self.remaining.push(len);
                                    self.pos = after;
                                    self.searched = 0;
                                    continue;
                                }
                            }
                        }
                        _ => return Err(ProtocolError("unknown type byte")),
                    }
                }
            };
            // An item ends at `end`: so may the arrays it completes.
            self.pos = end;
            self.searched = 0;
            loop {
                let Some(left) = self.remaining.last_mut() else {
                    return Ok(Some(end));
                };
                *left -= 1;
                if *left > 0 {
                    break;
                }
                self.remaining.pop();
            }
        }
    }

    /// [`line_at`] for the header of the item at `pos`, resuming the search
    /// for its CRLF where the previous call stopped.
    fn line<'b>(&mut self, buf: &'b [u8]) -> Result<Option<(&'b [u8], usize)>, ProtocolError> {
        let start = self.pos + 1;
        let rest = buf.get(start..).unwrap_or_default();
        let from = self.searched.min(rest.len());
        let found = rest[from..].windows(2).position(|w| w == b"\r\n");
        match found {
            Some(i) => {
                self.count(i + 2);
                let end = from + i;
                Ok(Some((&rest[..end], start + end + 2)))
            }
            None => {
                self.count(rest.len() - from);
                // A CR in the last byte may yet be followed by its LF.
                self.searched = rest.len().saturating_sub(1);
                if rest.len() > MAX_LINE {
                    Err(ProtocolError("line too long"))
                } else {
                    Ok(None)
                }
            }
        }
    }

    #[cfg(test)]
    fn count(&mut self, bytes: usize) {
        self.examined += bytes;
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn count(&mut self, _bytes: usize) {}
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

/// Appends a command as a RESP array of bulk strings (no allocation beyond
/// the growth of `out`).
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    header(out, b'*', args.len());
    for arg in args {
        let arg = arg.as_ref();
        header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `<kind><len>\r\n`.
fn header(out: &mut Vec<u8>, kind: u8, len: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push(kind);
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
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
        assert_eq!(cmd(&[]), b"*0\r\n");
        let long = "x".repeat(1234567);
        assert!(cmd(&[&long]).starts_with(b"*1\r\n$1234567\r\nxx"));
        let mut out = Vec::new();
        header(&mut out, b'$', usize::MAX);
        assert_eq!(out, format!("${}\r\n", usize::MAX).as_bytes());
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
            value,
            Value::Array(Some(vec![
                Value::Bulk(Some(b"message")),
                Value::Bulk(Some(b"chan")),
                Value::Bulk(Some(b"hello\r\nworld")),
            ]))
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

    /// Feeds `stream` to a scanner in the given pieces, as socket reads
    /// would arrive, and checks each answer against `parse` of the same
    /// buffer. Returns the lengths of the values found, in order.
    fn scan_in_pieces(stream: &[u8], cuts: &[usize]) -> Vec<usize> {
        let mut scanner = Scanner::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut found = Vec::new();
        let mut last = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            buf.extend_from_slice(&stream[last..cut]);
            last = cut;
            loop {
                let scanned = scanner.scan(&buf);
                let parsed = parse(&buf).map(|v| v.map(|(_, used)| used));
                assert_eq!(scanned, parsed, "buffer {buf:?}");
                match scanned {
                    Ok(Some(len)) => {
                        found.push(len);
                        buf.drain(..len);
                    }
                    Ok(None) => break,
                    Err(_) => return found,
                }
            }
        }
        found
    }

    #[test]
    fn scanner_finds_each_value_byte_by_byte() {
        let stream: &[u8] = b"*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$12\r\nhello\r\nworld\r\n\
            :1\r\n+OK\r\n-ERR x\r\n$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n\
            *2\r\n*2\r\n:1\r\n*0\r\n*1\r\n$2\r\n\r\n\r\n";
        let whole = scan_in_pieces(stream, &[]);
        assert_eq!(whole, [46, 4, 5, 8, 5, 5, 4, 6, 28]);
        let every: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(scan_in_pieces(stream, &every), whole);
        for step in 2..9 {
            let cuts: Vec<usize> = (step..stream.len()).step_by(step).collect();
            assert_eq!(scan_in_pieces(stream, &cuts), whole, "step {step}");
        }
    }

    #[test]
    fn scanner_reports_the_errors_parse_reports() {
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        let long = vec![b'+'; MAX_LINE + 10];
        for broken in [
            &b"?x\r\n"[..],
            b":abc\r\n",
            b"$3\r\nabcXY",
            b"$-5\r\n",
            b"*-2\r\n",
            b"$999999999999\r\n",
            b"*99999999\r\n",
            b"*2\r\n:1\r\n$2\r\nab\n\n",
            deep.as_bytes(),
            &long,
        ] {
            let expected = parse(broken).map(|v| v.map(|(_, used)| used));
            assert!(expected.is_err(), "{broken:?}");
            assert_eq!(Scanner::new().scan(broken), expected, "{broken:?}");
            // Byte by byte (the long line in 1 KiB reads: parse, the
            // reference, is quadratic on it).
            let step = if broken.len() > 1024 { 1024 } else { 1 };
            let cuts: Vec<usize> = (1..broken.len()).step_by(step).collect();
            assert_eq!(scan_in_pieces(broken, &cuts), Vec::<usize>::new());
        }
    }

    #[test]
    fn scanner_resets_after_a_value_and_on_request() {
        let mut scanner = Scanner::new();
        assert_eq!(scanner.scan(b"*2\r\n:1"), Ok(None));
        // The caller dropped its buffer (reconnection): start over.
        scanner.reset();
        assert_eq!(scanner.scan(b":7\r\n"), Ok(Some(4)));
        // Reset by itself: the next value starts at the buffer's first byte.
        assert_eq!(scanner.scan(b"+OK\r"), Ok(None));
        assert_eq!(scanner.scan(b"+OK\r\n"), Ok(Some(5)));
        // A shorter buffer is a new one.
        assert_eq!(scanner.scan(b"*2\r\n$3\r\nab"), Ok(None));
        assert_eq!(scanner.scan(b":5\r\n"), Ok(Some(4)));
    }

    /// An XRANGE-shaped reply: `[[id, [d, <data>, p, <prev>]], ...]`.
    fn xrange_reply(entries: usize, data: usize) -> Vec<u8> {
        fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
            out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        let payload = vec![b'x'; data];
        let mut out = format!("*{entries}\r\n").into_bytes();
        for i in 1..=entries {
            out.extend_from_slice(b"*2\r\n");
            bulk(&mut out, format!("{i}-0").as_bytes());
            out.extend_from_slice(b"*4\r\n");
            bulk(&mut out, b"d");
            bulk(&mut out, &payload);
            bulk(&mut out, b"p");
            bulk(&mut out, (i - 1).to_string().as_bytes());
        }
        out
    }

    #[test]
    fn scanner_is_linear_in_the_bytes_received() {
        // 100,000 entries in 64 KiB reads: parsing from the start after each
        // read examines the headers of everything received so far, every
        // time; the scanner examines each header byte about once.
        let reply = xrange_reply(100_000, 16);
        let (value, used) = parse(&reply).unwrap().unwrap();
        assert_eq!(used, reply.len());
        let Value::Array(Some(entries)) = value else {
            panic!("not an array")
        };
        assert_eq!(entries.len(), 100_000);
        let mut scanner = Scanner::new();
        let mut found = None;
        let mut reads = 0;
        for end in (64 * 1024..reply.len())
            .step_by(64 * 1024)
            .chain([reply.len()])
        {
            reads += 1;
            found = scanner.scan(&reply[..end]).unwrap();
        }
        assert_eq!(found, Some(reply.len()));
        assert!(reads > 50, "{reads} reads");
        assert!(
            scanner.examined <= reply.len() + 2 * reads,
            "examined {} of {} bytes",
            scanner.examined,
            reply.len()
        );
        // Byte by byte (one call per byte): still about one look per byte.
        let reply = xrange_reply(2_000, 16);
        let mut scanner = Scanner::new();
        for end in 1..reply.len() {
            assert_eq!(scanner.scan(&reply[..end]), Ok(None));
        }
        assert_eq!(scanner.scan(&reply), Ok(Some(reply.len())));
        assert!(
            scanner.examined <= 2 * reply.len(),
            "examined {} of {} bytes",
            scanner.examined,
            reply.len()
        );
    }

    use proptest::prelude::*;

    /// A value that owns its bytes, for generating and comparing.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Simple(Vec<u8>),
        Error(Vec<u8>),
        Integer(i64),
        Bulk(Option<Vec<u8>>),
        Array(Option<Vec<Owned>>),
    }

    fn own(value: &Value<'_>) -> Owned {
        match value {
            Value::Simple(s) => Owned::Simple(s.to_vec()),
            Value::Error(e) => Owned::Error(e.to_vec()),
            Value::Integer(i) => Owned::Integer(*i),
            Value::Bulk(b) => Owned::Bulk(b.map(<[u8]>::to_vec)),
            Value::Array(a) => {
                Owned::Array(a.as_ref().map(|items| items.iter().map(own).collect()))
            }
        }
    }

    /// RESP2 as the protocol description writes it, independently of
    /// [`encode_command`].
    fn serialize(value: &Owned, out: &mut Vec<u8>) {
        fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
            out.push(kind);
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
        match value {
            Owned::Simple(s) => line(out, b'+', s),
            Owned::Error(e) => line(out, b'-', e),
            Owned::Integer(i) => line(out, b':', i.to_string().as_bytes()),
            Owned::Bulk(None) => line(out, b'$', b"-1"),
            Owned::Bulk(Some(b)) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Owned::Array(None) => line(out, b'*', b"-1"),
            Owned::Array(Some(items)) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for item in items {
                    serialize(item, out);
                }
            }
        }
    }

    /// The text of a simple string or error: any bytes but a CRLF pair
    /// (lone CR and LF are allowed).
    fn line_text() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![3 => any::<u8>(), 1 => prop::sample::select(&b"\r\n"[..])];
        prop::collection::vec(byte, 0..16).prop_map(|bytes| {
            let mut text: Vec<u8> = Vec::with_capacity(bytes.len());
            for b in bytes {
                if !(b == b'\n' && text.last() == Some(&b'\r')) {
                    text.push(b);
                }
            }
            text
        })
    }

    fn bulk_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![3 => any::<u8>(), 1 => prop::sample::select(&b"\r\n$*:"[..])];
        prop::collection::vec(byte, 0..40)
    }

    /// Any value the parser accepts, nested up to its depth limit.
    fn value() -> impl Strategy<Value = Owned> {
        let leaf = prop_oneof![
            line_text().prop_map(Owned::Simple),
            line_text().prop_map(Owned::Error),
            any::<i64>().prop_map(Owned::Integer),
            prop::option::of(bulk_bytes()).prop_map(Owned::Bulk),
            Just(Owned::Array(None)),
        ];
        leaf.prop_recursive(MAX_DEPTH as u32, 48, 6, |inner| {
            prop::collection::vec(inner, 0..6).prop_map(|items| Owned::Array(Some(items)))
        })
    }

    /// Up to `n` cut points inside a buffer of `len` bytes (any values:
    /// they are reduced modulo `len`, sorted and deduplicated).
    fn cuts_in(len: usize, raw: &[usize]) -> Vec<usize> {
        let mut cuts: Vec<usize> = raw.iter().map(|c| c % len.max(1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts
    }

    proptest! {
        #[test]
        fn commands_read_back_as_their_arguments(
            args in prop::collection::vec(bulk_bytes(), 0..8),
        ) {
            let mut out = Vec::new();
            encode_command(&mut out, &args);
            let (value, used) = parse(&out).unwrap().unwrap();
            prop_assert_eq!(used, out.len());
            let bulks = args.iter().map(|a| Owned::Bulk(Some(a.clone()))).collect();
            prop_assert_eq!(own(&value), Owned::Array(Some(bulks)));
            prop_assert_eq!(Scanner::new().scan(&out), Ok(Some(out.len())));
        }

        #[test]
        fn values_read_back_whole_and_in_any_pieces(
            first in value(),
            second in value(),
            raw_cuts in prop::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut stream = Vec::new();
            serialize(&first, &mut stream);
            let first_len = stream.len();
            serialize(&second, &mut stream);
            // In one piece.
            let (value, used) = parse(&stream).unwrap().unwrap();
            prop_assert_eq!((own(&value), used), (first.clone(), first_len));
            let (value, used) = parse(&stream[used..]).unwrap().unwrap();
            prop_assert_eq!((own(&value), used), (second, stream.len() - first_len));
            let mut scanner = Scanner::new();
            prop_assert_eq!(scanner.scan(&stream), Ok(Some(first_len)));
            prop_assert_eq!(scanner.scan(&stream[first_len..]), Ok(Some(used)));
            let expected = vec![first_len, used];
            // Split at every byte and at random points (each step is checked
            // against parse of the same buffer).
            let every: Vec<usize> = (1..stream.len()).collect();
            prop_assert_eq!(&scan_in_pieces(&stream, &every), &expected);
            let cuts = cuts_in(stream.len(), &raw_cuts);
            prop_assert_eq!(&scan_in_pieces(&stream, &cuts), &expected);
            // The scanner's length is what parse then reads, in one pass.
            let (value, used) = parse(&stream[..first_len]).unwrap().unwrap();
            prop_assert_eq!((own(&value), used), (first, first_len));
        }

        #[test]
        fn scanner_agrees_with_parse_on_damaged_streams(
            value in value(),
            damage in prop::collection::vec(
                (any::<usize>(), prop_oneof![
                    any::<u8>(),
                    prop::sample::select(&b"\r\n*$:+-019?"[..]),
                ]),
                1..4,
            ),
            raw_cuts in prop::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut stream = Vec::new();
            serialize(&value, &mut stream);
            serialize(&value, &mut stream);
            for (at, byte) in damage {
                let at = at % stream.len();
                stream[at] = byte;
            }
            // scan_in_pieces compares every answer, errors included.
            let cuts = cuts_in(stream.len(), &raw_cuts);
            let found = scan_in_pieces(&stream, &cuts);
            let every: Vec<usize> = (1..stream.len()).collect();
            prop_assert_eq!(scan_in_pieces(&stream, &every), found);
        }
    }
}
