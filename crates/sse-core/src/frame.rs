//! The SSE wire format (WHATWG HTML, "Server-sent events", event stream
//! interpretation).
//!
//! Every function here appends to a caller-owned `Vec<u8>` so that the caller
//! can reuse one scratch buffer for all frames.
//!
//! Safety property of this module: *no payload can end an event early or forge
//! a field*. A parser only recognises fields at the start of a line, and a line
//! ends at CR, LF or CRLF. We therefore split the payload at every CR, LF and
//! CRLF and prefix each piece with `data: `, so every payload byte lands inside
//! a `data` field value. The event name and id are stripped of line breaks for
//! the same reason (callers pass validated names, this is defence in depth).

use std::rc::Rc;

/// An event formatted once and shared by every stream it goes to: a stream
/// keeps it alive until its bytes are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Shared(Rc<[u8]>),
    Static(&'static [u8]),
}

impl Frame {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Frame::Shared(b) => b,
            Frame::Static(b) => b,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// A frame formatted into `scratch` (a reused buffer) by `encode`.
    pub fn encode(scratch: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) -> Frame {
        scratch.clear();
        encode(scratch);
        Frame::Shared(Rc::from(&scratch[..]))
    }
}

/// A comment line: ignored by EventSource, keeps proxies and NAT entries alive.
pub const HEARTBEAT: &[u8] = b":\n";

/// Appends one complete event: optional `event:` and `id:` fields, the payload
/// as one `data:` line per payload line, and the blank line that dispatches it.
///
/// Line breaks inside the payload (`\n`, `\r\n`, lone `\r`) become separate
/// `data:` lines; the browser joins them with `\n`, so a payload using `\n`
/// arrives byte for byte, and one using `\r\n` or `\r` arrives with `\n`.
/// An empty payload still dispatches an event whose `data` is the empty string.
pub fn encode_event(out: &mut Vec<u8>, event: Option<&[u8]>, id: Option<&[u8]>, data: &[u8]) {
    out.reserve(data.len() + 32);
    if let Some(event) = event {
        push_field(out, b"event", event);
    }
    if let Some(id) = id {
        push_field(out, b"id", id);
    }
    for line in Lines::new(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Appends a `retry:` field (reconnection delay in milliseconds) on its own.
/// A block without `data` dispatches nothing, it only sets the delay.
pub fn encode_retry(out: &mut Vec<u8>, millis: u64) {
    out.extend_from_slice(b"retry: ");
    out.extend_from_slice(millis.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Longest HTTP/1.1 chunk-size line: 16 hex digits and CRLF.
pub const CHUNK_SIZE_LINE_MAX: usize = 18;

/// Writes the chunk-size line of HTTP/1.1 chunked encoding (`<hex>\r\n`) for
/// a chunk of `size` bytes, and returns its length. No allocation: streams
/// that write their own chunks call it once per write.
pub fn chunk_size_line(size: usize, out: &mut [u8; CHUNK_SIZE_LINE_MAX]) -> usize {
    let digits = ((usize::BITS - size.leading_zeros()).div_ceil(4) as usize).max(1);
    for (i, digit) in out[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *digit = b"0123456789abcdef"[(size >> shift) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// A single-line field whose value has had CR, LF and NUL removed (a NUL in
/// `id` makes browsers ignore the field, CR/LF would end the line).
fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend(
        value
            .iter()
            .copied()
            .filter(|b| !matches!(b, b'\r' | b'\n' | 0)),
    );
    out.push(b'\n');
}

/// Splits at `\r\n`, `\r` and `\n`, exactly as an SSE parser does. Always
/// yields at least one (possibly empty) line; a trailing break yields a final
/// empty line, so `"a\n"` is `["a", ""]` and round-trips through the browser.
struct Lines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Lines<'a> {
    fn new(data: &'a [u8]) -> Self {
        Lines { rest: Some(data) }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            None => {
                self.rest = None;
                Some(rest)
            }
            Some(i) => {
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                self.rest = Some(&rest[i + skip..]);
                Some(&rest[..i])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &[u8]) -> String {
        let mut out = Vec::new();
        encode_event(&mut out, Some(name.as_bytes()), None, data);
        String::from_utf8(out).unwrap()
    }

    /// One event as an EventSource dispatches it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Dispatched {
        /// The event type (`message` when the stream names none).
        kind: Vec<u8>,
        data: Vec<u8>,
        /// The last event ID string at dispatch (`None`: no `id` field was
        /// ever accepted, the spec's empty string).
        last_id: Option<Vec<u8>>,
    }

    /// What a stream leaves an EventSource with.
    #[derive(Debug, Default)]
    struct Interpreted {
        events: Vec<Dispatched>,
        /// The reconnection time, if a `retry` field set it.
        retry: Option<u64>,
    }

    /// The WHATWG "event stream interpretation" (HTML, Server-sent events,
    /// 9.2.6), written from the spec as a reference for these tests. It
    /// works on bytes rather than on decoded text: every byte the algorithm
    /// looks at (CR, LF, `:`, space, NUL) is ASCII and never part of a UTF-8
    /// sequence, so this is the spec's outcome before decoding, and
    /// comparing bytes is stricter than comparing decoded strings.
    fn interpret(stream: &[u8]) -> Interpreted {
        let stream = stream.strip_prefix(b"\xef\xbb\xbf").unwrap_or(stream);
        let mut out = Interpreted::default();
        let (mut data, mut kind, mut id_buffer) = (Vec::new(), Vec::new(), None);
        let mut rest = stream;
        // Lines end at CRLF, LF or CR; an unterminated last line is
        // discarded with the rest of the incomplete event at end of stream.
        while let Some(i) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            let line = &rest[..i];
            let skip = if rest[i..].starts_with(b"\r\n") { 2 } else { 1 };
            rest = &rest[i + skip..];
            if line.is_empty() {
                // Dispatch. The last event ID buffer is not reset.
                if !data.is_empty() {
                    if data.last() == Some(&b'\n') {
                        data.pop();
                    }
                    out.events.push(Dispatched {
                        kind: if kind.is_empty() {
                            b"message".to_vec()
                        } else {
                            kind.clone()
                        },
                        data: std::mem::take(&mut data),
                        last_id: id_buffer.clone(),
                    });
                }
                data.clear();
                kind.clear();
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(c) => {
                    let value = &line[c + 1..];
                    (&line[..c], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"event" => kind = value.to_vec(),
                b"data" => {
                    data.extend_from_slice(value);
                    data.push(b'\n');
                }
                b"id" if !value.contains(&0) => id_buffer = Some(value.to_vec()),
                b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                    out.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                }
                _ => {}
            }
        }
        out
    }

    /// The data an EventSource gives for `payload`, as documented on
    /// [`encode_event`]: line breaks (CRLF, CR, LF) become LF.
    fn normalized(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len());
        let mut i = 0;
        while i < payload.len() {
            match payload[i] {
                b'\r' if payload.get(i + 1) == Some(&b'\n') => {
                    out.push(b'\n');
                    i += 1;
                }
                b'\r' => out.push(b'\n'),
                b => out.push(b),
            }
            i += 1;
        }
        out
    }

    /// A field value as [`push_field`] writes it.
    fn stripped(value: &[u8]) -> Vec<u8> {
        value
            .iter()
            .copied()
            .filter(|b| !matches!(b, b'\r' | b'\n' | 0))
            .collect()
    }

    fn parse_events(stream: &[u8]) -> Vec<Dispatched> {
        interpret(stream).events
    }

    #[test]
    fn single_line_payload() {
        assert_eq!(
            event("logs:w1:f1", b"hello"),
            "event: logs:w1:f1\ndata: hello\n\n"
        );
    }

    #[test]
    fn every_line_break_starts_a_new_data_line() {
        assert_eq!(
            event("c", b"a\nb\r\nc\rd"),
            "event: c\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn trailing_and_empty_lines_survive() {
        assert_eq!(event("c", b"a\n"), "event: c\ndata: a\ndata: \n\n");
        assert_eq!(event("c", b""), "event: c\ndata: \n\n");
        assert_eq!(event("c", b"\n\n"), "event: c\ndata: \ndata: \ndata: \n\n");
        assert_eq!(parse_events(event("c", b"a\n").as_bytes())[0].data, b"a\n");
        assert_eq!(parse_events(event("c", b"").as_bytes())[0].data, b"");
    }

    #[test]
    fn leading_space_and_colons_are_kept() {
        let parsed = parse_events(event("c", b"  x: y").as_bytes());
        assert_eq!(parsed[0].data, b"  x: y");
    }

    #[test]
    fn hostile_payloads_cannot_forge_fields_or_events() {
        let hostile: &[&[u8]] = &[
            b"x\n\nevent: admin\ndata: forged",
            b"x\r\rid: 999\r\rdata: forged",
            b"x\r\n\r\nretry: 1\r\n\r\n",
            b"\nid: 7\n",
            b"data: a\n\ndata: b",
        ];
        for payload in hostile {
            let frame = event("c", payload);
            let parsed = parse_events(frame.as_bytes());
            assert_eq!(parsed.len(), 1, "{frame:?}");
            assert_eq!(parsed[0].kind, b"c");
            assert_eq!(parsed[0].last_id, None, "id forged by {frame:?}");
            assert_eq!(parsed[0].data, normalized(payload));
        }
    }

    #[test]
    fn field_values_lose_line_breaks() {
        let mut out = Vec::new();
        encode_event(&mut out, Some(b"a\nevent: b"), Some(b"1\r\n2\0"), b"d");
        assert_eq!(out, b"event: aevent: b\nid: 12\ndata: d\n\n");
    }

    #[test]
    fn binary_bytes_pass_through_untouched() {
        let payload = [0xff, 0xfe, 0x00, b'a', 0xc3, 0x28];
        let mut out = Vec::new();
        encode_event(&mut out, None, None, &payload);
        assert_eq!(&out[..6], b"data: ");
        assert_eq!(&out[6..12], &payload);
    }

    #[test]
    fn retry_field() {
        let mut out = Vec::new();
        encode_retry(&mut out, 3000);
        assert_eq!(out, b"retry: 3000\n\n");
    }

    #[test]
    fn chunk_size_lines_match_hex_formatting() {
        for size in [
            0usize,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            4095,
            16384,
            1 << 20,
            usize::MAX,
        ] {
            let mut out = [0u8; CHUNK_SIZE_LINE_MAX];
            let len = chunk_size_line(size, &mut out);
            assert_eq!(&out[..len], format!("{size:x}\r\n").as_bytes(), "{size}");
        }
    }

    use proptest::prelude::*;

    /// Bytes with the ones that matter to SSE often among them.
    fn sse_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            3 => any::<u8>(),
            2 => prop::sample::select(&b"\r\n: \0d\xef\xbb\xbf"[..]),
        ];
        prop::collection::vec(byte, 0..max)
    }

    /// What a stream may carry between events.
    #[derive(Debug, Clone)]
    enum Item {
        Event {
            kind: Option<Vec<u8>>,
            id: Option<Vec<u8>>,
            data: Vec<u8>,
        },
        Heartbeat,
        Retry(u64),
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            6 => (
                prop::option::of(sse_bytes(12)),
                prop::option::of(sse_bytes(12)),
                sse_bytes(64),
            )
                .prop_map(|(kind, id, data)| Item::Event { kind, id, data }),
            1 => Just(Item::Heartbeat),
            1 => any::<u64>().prop_map(Item::Retry),
        ]
    }

    proptest! {
        #[test]
        fn any_event_reads_back_as_itself(
            kind in prop::option::of(sse_bytes(16)),
            id in prop::option::of(sse_bytes(16)),
            data in sse_bytes(256),
        ) {
            let mut frame = Vec::new();
            encode_event(&mut frame, kind.as_deref(), id.as_deref(), &data);
            let read = interpret(&frame);
            let kind = kind.map(|k| stripped(&k)).filter(|k| !k.is_empty());
            prop_assert_eq!(
                read.events,
                vec![Dispatched {
                    kind: kind.unwrap_or(b"message".to_vec()),
                    data: normalized(&data),
                    last_id: id.map(|i| stripped(&i)),
                }]
            );
            prop_assert_eq!(read.retry, None);
            // Nothing is left pending after the frame.
            prop_assert!(frame.ends_with(b"\n\n"));
        }

        #[test]
        fn streams_of_frames_read_back_in_order(items in prop::collection::vec(item(), 0..12)) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            let mut last_id = None;
            let mut retry = None;
            for item in &items {
                match item {
                    Item::Event { kind, id, data } => {
                        encode_event(&mut stream, kind.as_deref(), id.as_deref(), data);
                        if let Some(id) = id {
                            last_id = Some(stripped(id));
                        }
                        let kind = kind.as_deref().map(stripped).filter(|k| !k.is_empty());
                        expected.push(Dispatched {
                            kind: kind.unwrap_or(b"message".to_vec()),
                            data: normalized(data),
                            last_id: last_id.clone(),
                        });
                    }
                    Item::Heartbeat => stream.extend_from_slice(HEARTBEAT),
                    Item::Retry(ms) => {
                        encode_retry(&mut stream, *ms);
                        retry = Some(*ms);
                    }
                }
            }
            let read = interpret(&stream);
            prop_assert_eq!(read.events, expected);
            prop_assert_eq!(read.retry, retry);
        }

        #[test]
        fn chunk_size_line_is_lowercase_hex(size in any::<usize>()) {
            let mut out = [0u8; CHUNK_SIZE_LINE_MAX];
            let len = chunk_size_line(size, &mut out);
            let expected = format!("{size:x}\r\n");
            prop_assert_eq!(&out[..len], expected.as_bytes());
        }
    }
}
