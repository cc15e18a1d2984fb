//! Times reading one large reply that arrives in 64 KiB socket reads: an
//! XRANGE of 100,000 entries `[id, [d, <2 KiB>, p, <id>]]` (about 210 MB).
//!
//! - old way: `resp::parse` of the whole buffer after every read, until it
//!   finds the value (each attempt starts over from the first byte);
//! - scanner: `resp::Scanner::scan` after every read, then one `parse` of
//!   the complete value.
//!
//! Run with `cargo run --release -p sse-core --example resp_scan`
//! (an optional argument sets the number of entries).

use std::time::{Duration, Instant};

use sse_core::resp::{self, Scanner, Value};

const READ: usize = 64 * 1024;

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

fn xrange_reply(entries: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..2048).map(|i| b'a' + (i % 26) as u8).collect();
    let mut out = format!("*{entries}\r\n").into_bytes();
    for i in 1..=entries {
        out.extend_from_slice(b"*2\r\n");
        bulk(&mut out, format!("{i}-0").as_bytes());
        out.extend_from_slice(b"*4\r\n");
        bulk(&mut out, b"d");
        bulk(&mut out, &data);
        bulk(&mut out, b"p");
        bulk(&mut out, (i - 1).to_string().as_bytes());
    }
    out
}

fn entries_of(value: &Value<'_>) -> usize {
    match value {
        Value::Array(Some(items)) => items.len(),
        _ => 0,
    }
}

/// Feeds `reply` in reads of `READ` bytes to `attempt`, which answers the
/// number of entries once the value is complete. Returns the time spent in
/// `attempt` (the copies into the buffer are not counted) and the answer.
fn feed(reply: &[u8], mut attempt: impl FnMut(&[u8]) -> Option<usize>) -> (Duration, usize, usize) {
    let mut buf = Vec::with_capacity(reply.len());
    let mut spent = Duration::ZERO;
    let mut reads = 0;
    for piece in reply.chunks(READ) {
        buf.extend_from_slice(piece);
        reads += 1;
        let t = Instant::now();
        let done = attempt(&buf);
        spent += t.elapsed();
        if let Some(n) = done {
            return (spent, n, reads);
        }
    }
    panic!("the reply never completed");
}

fn main() {
    let entries: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("number of entries"))
        .unwrap_or(100_000);
    let reply = xrange_reply(entries);
    println!(
        "reply: {entries} entries, {:.1} MB, {} reads of {} KiB",
        reply.len() as f64 / 1e6,
        reply.len().div_ceil(READ),
        READ / 1024
    );

    let (old, n_old, reads) = feed(&reply, |buf| {
        resp::parse(buf)
            .expect("valid RESP")
            .map(|(value, _)| entries_of(&value))
    });
    println!(
        "old way (parse from the start after every read): {:>9.1} ms ({reads} parses)",
        old.as_secs_f64() * 1e3
    );

    let mut scanner = Scanner::new();
    let (new, n_new, reads) = feed(&reply, |buf| {
        let len = scanner.scan(buf).expect("valid RESP")?;
        let (value, used) = resp::parse(&buf[..len]).expect("valid RESP")?;
        assert_eq!(used, len);
        Some(entries_of(&value))
    });
    println!(
        "scanner (scan after every read, one parse):      {:>9.1} ms ({reads} scans)",
        new.as_secs_f64() * 1e3
    );

    let t = Instant::now();
    let once = resp::parse(&reply)
        .expect("valid RESP")
        .map(|(v, _)| entries_of(&v));
    println!(
        "one parse of the complete reply, for reference:  {:>9.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!((n_old, n_new, once), (entries, entries, Some(entries)));
    println!("speed-up: {:.0}x", old.as_secs_f64() / new.as_secs_f64());
}
