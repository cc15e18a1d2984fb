//! Incremental HTTP/1.1 response parsing and a Server-Sent Events parser.
//!
//! Everything here is fed whatever `read()` returned, split at arbitrary
//! points, and keeps only the state it needs between calls: the response head
//! (small, buffered until `\r\n\r\n`), the chunked-transfer state machine, and
//! the current SSE line and event.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    HeadTooLong,
    BadStatusLine,
    BadChunkSize,
    BadChunkEnd,
    LineTooLong,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ParseError::HeadTooLong => "response head too long",
            ParseError::BadStatusLine => "bad status line",
            ParseError::BadChunkSize => "bad chunk size",
            ParseError::BadChunkEnd => "chunk not followed by CRLF",
            ParseError::LineTooLong => "SSE line too long",
        };
        f.write_str(s)
    }
}

const MAX_HEAD: usize = 16 * 1024;
/// Longest SSE line accepted (the large workload sends 16 KiB payloads).
const MAX_LINE: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<u64>,
    pub content_type: String,
}

/// Buffers a response head until its blank line.
#[derive(Default)]
pub struct HeadParser {
    buf: Vec<u8>,
}

impl HeadParser {
    /// Returns the head and how many bytes of `input` it used, once complete.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<(Head, usize)>, ParseError> {
        let before = self.buf.len();
        // Only what can still complete the head is copied.
        let take = input.len().min(MAX_HEAD + 4 - before.min(MAX_HEAD + 4));
        self.buf.extend_from_slice(&input[..take]);
        let from = before.saturating_sub(3);
        let end = match find(&self.buf[from..], b"\r\n\r\n") {
            Some(i) => from + i + 4,
            None => {
                if self.buf.len() > MAX_HEAD {
                    return Err(ParseError::HeadTooLong);
                }
                return Ok(None);
            }
        };
        let head = parse_head(&self.buf[..end])?;
        let used = end - before;
        self.buf.clear();
        Ok(Some((head, used)))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(raw: &[u8]) -> Result<Head, ParseError> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().ok_or(ParseError::BadStatusLine)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(ParseError::BadStatusLine);
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(ParseError::BadStatusLine)?;
    let mut head = Head {
        status,
        ..Head::default()
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = value.to_string();
        }
    }
    Ok(head)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` seen so far.
    Size {
        val: u64,
        digits: u32,
    },
    /// After `;` in the size line: extensions, skipped to the LF.
    Ext {
        val: u64,
    },
    Data(u64),
    /// After a chunk's data: CR LF.
    DataEnd {
        cr: bool,
    },
    /// After the last chunk: trailer lines until an empty one.
    Trailer {
        line_empty: bool,
    },
    Done,
}

/// Decodes `Transfer-Encoding: chunked`.
pub struct ChunkedDecoder {
    st: Chunk,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            st: Chunk::Size { val: 0, digits: 0 },
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.st == Chunk::Done
    }

    /// Feeds raw body bytes; `out` receives the decoded data. Returns the
    /// number of bytes used: all of `input`, unless the body ended in it.
    pub fn feed<'a>(
        &mut self,
        input: &'a [u8],
        out: &mut impl FnMut(&'a [u8]),
    ) -> Result<usize, ParseError> {
        let mut i = 0;
        while i < input.len() {
            match self.st {
                Chunk::Size { val, digits } => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            if digits >= 15 {
                                return Err(ParseError::BadChunkSize);
                            }
                            let d = (b as char).to_digit(16).unwrap() as u64;
                            self.st = Chunk::Size {
                                val: val * 16 + d,
                                digits: digits + 1,
                            };
                        }
                        b';' | b' ' | b'\t' if digits > 0 => self.st = Chunk::Ext { val },
                        b'\r' if digits > 0 => self.st = Chunk::Ext { val },
                        b'\n' if digits > 0 => self.end_size_line(val),
                        _ => return Err(ParseError::BadChunkSize),
                    }
                }
                Chunk::Ext { val } => match input[i..].iter().position(|&b| b == b'\n') {
                    Some(p) => {
                        i += p + 1;
                        self.end_size_line(val);
                    }
                    None => i = input.len(),
                },
                Chunk::Data(left) => {
                    let n = ((input.len() - i) as u64).min(left) as usize;
                    out(&input[i..i + n]);
                    i += n;
                    self.st = if left == n as u64 {
                        Chunk::DataEnd { cr: false }
                    } else {
                        Chunk::Data(left - n as u64)
                    };
                }
                Chunk::DataEnd { cr } => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\r' if !cr => self.st = Chunk::DataEnd { cr: true },
                        b'\n' => self.st = Chunk::Size { val: 0, digits: 0 },
                        _ => return Err(ParseError::BadChunkEnd),
                    }
                }
                Chunk::Trailer { line_empty } => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\r' => {}
                        b'\n' if line_empty => {
                            self.st = Chunk::Done;
                            return Ok(i);
                        }
                        b'\n' => self.st = Chunk::Trailer { line_empty: true },
                        _ => self.st = Chunk::Trailer { line_empty: false },
                    }
                }
                Chunk::Done => return Ok(i),
            }
        }
        Ok(i)
    }

    fn end_size_line(&mut self, val: u64) {
        self.st = if val == 0 {
            Chunk::Trailer { line_empty: true }
        } else {
            Chunk::Data(val)
        };
    }
}

/// The body framing announced by a response head.
pub enum Body {
    Chunked(ChunkedDecoder),
    Length(u64),
    UntilClose,
}

impl Body {
    pub fn for_head(head: &Head) -> Body {
        if head.chunked {
            Body::Chunked(ChunkedDecoder::default())
        } else if let Some(n) = head.content_length {
            Body::Length(n)
        } else {
            Body::UntilClose
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            Body::Chunked(c) => c.is_done(),
            Body::Length(n) => *n == 0,
            Body::UntilClose => false,
        }
    }

    /// Decodes body bytes into `out`; returns the bytes used (fewer than
    /// `input` only when the body ends inside it).
    pub fn feed<'a>(
        &mut self,
        input: &'a [u8],
        out: &mut impl FnMut(&'a [u8]),
    ) -> Result<usize, ParseError> {
        match self {
            Body::Chunked(c) => c.feed(input, out),
            Body::Length(left) => {
                let n = (input.len() as u64).min(*left) as usize;
                if n > 0 {
                    out(&input[..n]);
                }
                *left -= n as u64;
                Ok(n)
            }
            Body::UntilClose => {
                if !input.is_empty() {
                    out(input);
                }
                Ok(input.len())
            }
        }
    }
}

/// One thing an SSE stream said.
#[derive(Debug, PartialEq, Eq)]
pub enum SseItem<'a> {
    /// A dispatched event: its `event:` type (empty if none) and its data,
    /// the `data:` lines joined by `\n`.
    Event {
        event: &'a [u8],
        data: &'a [u8],
        id: &'a [u8],
    },
    /// A comment line (`:` ...), e.g. a heartbeat.
    Comment,
    /// A `retry:` field with a valid number.
    Retry(u64),
}

#[derive(Default)]
struct SseEvent {
    event: Vec<u8>,
    data: Vec<u8>,
    id: Vec<u8>,
    has_data: bool,
}

/// The SSE line parser (HTML Living Standard, "event stream interpretation"):
/// lines end with CRLF, LF or CR; a blank line dispatches the event.
#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The last chunk ended with CR: a LF starting the next one belongs to it.
    skip_lf: bool,
    ev: SseEvent,
}

impl SseParser {
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut impl FnMut(SseItem),
    ) -> Result<(), ParseError> {
        if self.skip_lf && !input.is_empty() {
            self.skip_lf = false;
            if input[0] == b'\n' {
                input = &input[1..];
            }
        }
        while !input.is_empty() {
            match input.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    if self.line.len() + input.len() > MAX_LINE {
                        return Err(ParseError::LineTooLong);
                    }
                    self.line.extend_from_slice(input);
                    break;
                }
                Some(p) => {
                    if self.line.is_empty() {
                        line(&mut self.ev, &input[..p], out);
                    } else {
                        self.line.extend_from_slice(&input[..p]);
                        line(&mut self.ev, &self.line, out);
                        self.line.clear();
                    }
                    let cr = input[p] == b'\r';
                    input = &input[p + 1..];
                    if cr {
                        if input.is_empty() {
                            self.skip_lf = true;
                        } else if input[0] == b'\n' {
                            input = &input[1..];
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn line(ev: &mut SseEvent, l: &[u8], out: &mut impl FnMut(SseItem)) {
    if l.is_empty() {
        if ev.has_data {
            let data = &ev.data[..ev.data.len() - 1]; // drop the last '\n'
            out(SseItem::Event {
                event: &ev.event,
                data,
                id: &ev.id,
            });
        }
        ev.data.clear();
        ev.event.clear();
        ev.has_data = false;
        return;
    }
    if l[0] == b':' {
        out(SseItem::Comment);
        return;
    }
    let (field, mut value) = match l.iter().position(|&b| b == b':') {
        Some(p) => (&l[..p], &l[p + 1..]),
        None => (l, &b""[..]),
    };
    if value.first() == Some(&b' ') {
        value = &value[1..];
    }
    match field {
        b"data" => {
            ev.data.extend_from_slice(value);
            ev.data.push(b'\n');
            ev.has_data = true;
        }
        b"event" => {
            ev.event.clear();
            ev.event.extend_from_slice(value);
        }
        b"id" => {
            ev.id.clear();
            ev.id.extend_from_slice(value);
        }
        b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
            if let Ok(n) = std::str::from_utf8(value).unwrap_or("").parse() {
                out(SseItem::Retry(n));
            }
        }
        _ => {}
    }
}

/// What a subscriber connection reports while its response streams in.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamItem<'a> {
    Head(&'a Head),
    Sse(SseItem<'a>),
    /// The body ended (last chunk or Content-Length reached).
    End,
}

enum Phase {
    Head(HeadParser),
    Body(Body),
    Ended,
}

/// A whole SSE response: head, then body framing, then SSE.
pub struct SseStream {
    phase: Phase,
    pub head: Option<Head>,
    sse: SseParser,
}

impl Default for SseStream {
    fn default() -> Self {
        SseStream {
            phase: Phase::Head(HeadParser::default()),
            head: None,
            sse: SseParser::default(),
        }
    }
}

impl SseStream {
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut impl FnMut(StreamItem),
    ) -> Result<(), ParseError> {
        loop {
            match &mut self.phase {
                Phase::Head(hp) => match hp.feed(input)? {
                    None => return Ok(()),
                    Some((head, used)) => {
                        input = &input[used..];
                        let body = Body::for_head(&head);
                        self.phase = Phase::Body(body);
                        out(StreamItem::Head(self.head.insert(head)));
                    }
                },
                Phase::Body(body) => {
                    let sse = &mut self.sse;
                    let mut err = None;
                    body.feed(input, &mut |data| {
                        if err.is_none() {
                            if let Err(e) = sse.feed(data, &mut |item| out(StreamItem::Sse(item))) {
                                err = Some(e);
                            }
                        }
                    })?;
                    if let Some(e) = err {
                        return Err(e);
                    }
                    if body.is_done() {
                        self.phase = Phase::Ended;
                        out(StreamItem::End);
                    }
                    return Ok(());
                }
                Phase::Ended => return Ok(()),
            }
        }
    }
}

/// A keep-alive response reader for the HTTP publisher: head, then a body
/// that is discarded. Returns each complete response's status.
#[derive(Default)]
pub struct ResponseReader {
    head: HeadParser,
    body: Option<(u16, Body)>,
}

impl ResponseReader {
    pub fn feed(&mut self, mut input: &[u8], done: &mut impl FnMut(u16)) -> Result<(), ParseError> {
        while !input.is_empty() {
            match &mut self.body {
                None => match self.head.feed(input)? {
                    None => return Ok(()),
                    Some((head, used)) => {
                        input = &input[used..];
                        let body = match Body::for_head(&head) {
                            // A publisher response without framing has no body.
                            Body::UntilClose => Body::Length(0),
                            b => b,
                        };
                        self.body = Some((head.status, body));
                    }
                },
                Some((_, body)) => {
                    let used = body.feed(input, &mut |_| {})?;
                    input = &input[used..];
                }
            }
            if let Some((status, body)) = &self.body {
                if body.is_done() {
                    done(*status);
                    self.body = None;
                }
            }
        }
        // A head with an empty body completes without further input.
        if let Some((status, body)) = &self.body {
            if body.is_done() {
                done(*status);
                self.body = None;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Own {
        Head(u16, bool),
        Event(String, String, String),
        Comment,
        Retry(u64),
        End,
    }

    fn collect(stream: &mut SseStream, input: &[u8], v: &mut Vec<Own>) {
        stream
            .feed(input, &mut |it| {
                v.push(match it {
                    StreamItem::Head(h) => Own::Head(h.status, h.chunked),
                    StreamItem::Sse(SseItem::Event { event, data, id }) => Own::Event(
                        String::from_utf8_lossy(event).into(),
                        String::from_utf8_lossy(data).into(),
                        String::from_utf8_lossy(id).into(),
                    ),
                    StreamItem::Sse(SseItem::Comment) => Own::Comment,
                    StreamItem::Sse(SseItem::Retry(n)) => Own::Retry(n),
                    StreamItem::End => Own::End,
                })
            })
            .unwrap();
    }

    /// Feeds `raw` split at every possible pair of points, and in single
    /// bytes, and checks all give the same items as one piece.
    fn all_splits(raw: &[u8]) -> Vec<Own> {
        let mut whole = Vec::new();
        collect(&mut SseStream::default(), raw, &mut whole);
        let mut bytes = Vec::new();
        let mut s = SseStream::default();
        for b in raw {
            collect(&mut s, std::slice::from_ref(b), &mut bytes);
        }
        assert_eq!(bytes, whole, "byte-by-byte");
        for i in 0..=raw.len() {
            for j in i..=raw.len() {
                let mut v = Vec::new();
                let mut s = SseStream::default();
                collect(&mut s, &raw[..i], &mut v);
                collect(&mut s, &raw[i..j], &mut v);
                collect(&mut s, &raw[j..], &mut v);
                assert_eq!(v, whole, "split at {i},{j}");
            }
        }
        whole
    }

    fn chunked(parts: &[&str]) -> String {
        let mut s = String::new();
        for p in parts {
            s.push_str(&format!("{:x}\r\n{}\r\n", p.len(), p));
        }
        s
    }

    #[test]
    fn chunked_sse_any_split() {
        let body = chunked(&[
            "retry: 3000\n\n",
            "event: ch1\ndata: c=1 s=1",
            " t=5\n\nevent: ch1\ndata: line1\ndata: line2\n\n: hb\n\n",
            "event: x\r\ndata:no-space\r\n\r\n",
        ]);
        let raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{body}0\r\n\r\n"
        );
        let got = all_splits(raw.as_bytes());
        assert_eq!(
            got,
            vec![
                Own::Head(200, true),
                Own::Retry(3000),
                Own::Event("ch1".into(), "c=1 s=1 t=5".into(), "".into()),
                Own::Event("ch1".into(), "line1\nline2".into(), "".into()),
                Own::Comment,
                Own::Event("x".into(), "no-space".into(), "".into()),
                Own::End,
            ]
        );
    }

    #[test]
    fn chunk_extensions_and_uppercase_hex() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nB;foo=bar\r\ndata: abcd\n\r\n1\r\n\n\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let got = all_splits(raw);
        assert_eq!(
            got,
            vec![
                Own::Head(200, true),
                Own::Event("".into(), "abcd".into(), "".into()),
                Own::End
            ]
        );
    }

    #[test]
    fn identity_body_cr_line_ends_and_ids() {
        // nchan's eventsource: no chunked framing, body until close.
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nConnection: keep-alive\r\n\r\n: hi\n\nid: 1:0\rdata: a\r\rdata\r\n\r\ndata: b\n";
        let got = all_splits(raw);
        assert_eq!(
            got,
            vec![
                Own::Head(200, false),
                Own::Comment,
                Own::Event("".into(), "a".into(), "1:0".into()),
                // `data` with no colon: an empty data line.
                Own::Event("".into(), "".into(), "1:0".into()),
            ]
        );
    }

    #[test]
    fn blank_lines_without_data_dispatch_nothing() {
        let raw = b"HTTP/1.1 200 OK\r\n\r\nevent: only\n\nretry: x\n\nretry: 10\n\n";
        assert_eq!(all_splits(raw), vec![Own::Head(200, false), Own::Retry(10)]);
    }

    #[test]
    fn error_status_and_bad_chunk() {
        let mut v = Vec::new();
        collect(
            &mut SseStream::default(),
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nabc",
            &mut v,
        );
        assert_eq!(v, vec![Own::Head(400, false), Own::End]);
        let mut s = SseStream::default();
        let r = s.feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            &mut |_| {},
        );
        assert_eq!(r, Err(ParseError::BadChunkSize));
        let mut s = SseStream::default();
        let r = s.feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX",
            &mut |_| {},
        );
        assert_eq!(r, Err(ParseError::BadChunkEnd));
        let mut s = SseStream::default();
        assert_eq!(
            s.feed(b"SSH-2.0\r\n\r\n", &mut |_| {}),
            Err(ParseError::BadStatusLine)
        );
    }

    #[test]
    fn large_line_across_many_chunks() {
        let payload = "x".repeat(70_000);
        let mut body = String::from("data: ");
        body.push_str(&payload);
        body.push_str("\n\n");
        let parts: Vec<String> = body
            .as_bytes()
            .chunks(4096)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let parts: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
        let raw = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            chunked(&parts)
        );
        let mut v = Vec::new();
        let mut s = SseStream::default();
        for piece in raw.as_bytes().chunks(1000) {
            collect(&mut s, piece, &mut v);
        }
        assert_eq!(v.len(), 2);
        assert_eq!(v[1], Own::Event("".into(), payload, "".into()));
    }

    #[test]
    fn response_reader_keep_alive() {
        let raw = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for split in 0..raw.len() {
            let mut r = ResponseReader::default();
            let mut got = Vec::new();
            r.feed(&raw[..split], &mut |s| got.push(s)).unwrap();
            r.feed(&raw[split..], &mut |s| got.push(s)).unwrap();
            assert_eq!(got, vec![201, 202, 200], "split {split}");
        }
    }
}
