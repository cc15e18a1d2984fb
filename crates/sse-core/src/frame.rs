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

    /// A minimal SSE parser following the spec's algorithm, used to check that
    /// what we emit is read back as exactly one event with the intended data.
    fn parse_events(stream: &[u8]) -> Vec<(String, String, Option<String>)> {
        let text = String::from_utf8_lossy(stream).into_owned();
        let mut events = Vec::new();
        let (mut name, mut data, mut id) = (String::new(), String::new(), None);
        let mut lines = Vec::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(['\r', '\n']) {
            lines.push(rest[..i].to_string());
            let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
            rest = &rest[i + skip..];
        }
        for line in lines {
            if line.is_empty() {
                if !data.is_empty() {
                    data.pop();
                    events.push((
                        std::mem::take(&mut name),
                        std::mem::take(&mut data),
                        id.clone(),
                    ));
                }
                name.clear();
                data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.find(':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(' ').unwrap_or(v))
                }
                None => (line.as_str(), ""),
            };
            match field {
                "event" => name = value.to_string(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" => id = Some(value.to_string()),
                _ => {}
            }
        }
        events
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
        assert_eq!(parse_events(event("c", b"a\n").as_bytes())[0].1, "a\n");
        assert_eq!(parse_events(event("c", b"").as_bytes())[0].1, "");
    }

    #[test]
    fn leading_space_and_colons_are_kept() {
        let parsed = parse_events(event("c", b"  x: y").as_bytes());
        assert_eq!(parsed[0].1, "  x: y");
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
            assert_eq!(parsed[0].0, "c");
            assert_eq!(parsed[0].2, None, "id forged by {frame:?}");
            let normalized = String::from_utf8_lossy(payload)
                .replace("\r\n", "\n")
                .replace('\r', "\n");
            assert_eq!(parsed[0].1, normalized);
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
}
