//! The publisher: Redis PUBLISH pipelined on one raw RESP connection (for
//! nginx-sse), or HTTP POSTs on keep-alive connections (for nchan), paced
//! to a message rate.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::acct::{self, Stamp};
use crate::http::ResponseReader;
use crate::sys;

pub enum Kind {
    Redis,
    /// POST `{path_prefix}{channel}`.
    Http {
        path_prefix: String,
    },
}

struct PConn {
    sock: TcpStream,
    out: Vec<u8>,
    out_off: usize,
    inflight: u64,
    /// HTTP: the channel of the request in flight.
    chan: Option<u32>,
    http: ResponseReader,
    resp: Vec<u8>,
}

impl PConn {
    fn open(port: u16) -> io::Result<PConn> {
        let sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_nodelay(true)?;
        sock.set_nonblocking(true)?;
        Ok(PConn {
            sock,
            out: Vec::new(),
            out_off: 0,
            inflight: 0,
            chan: None,
            http: ResponseReader::default(),
            resp: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct PubStats {
    /// Publisher connections the server closed (and that were reopened).
    pub reconnects: u64,
    pub sent: u64,
    pub replies: u64,
    pub errors: u64,
    /// Sum of PUBLISH replies: Redis subscriber connections reached.
    pub receivers: u64,
    /// HTTP publisher responses by status.
    pub statuses: BTreeMap<u16, u64>,
    pub notes: Vec<String>,
}

pub struct Publisher {
    kind: Kind,
    port: u16,
    conns: Vec<PConn>,
    pub st: PubStats,
    payload: Vec<u8>,
    rbuf: Vec<u8>,
}

impl Publisher {
    /// `conns` connections to 127.0.0.1:`port` (Redis uses one).
    pub fn connect(kind: Kind, port: u16, conns: usize) -> io::Result<Publisher> {
        let n = match kind {
            Kind::Redis => 1,
            Kind::Http { .. } => conns.max(1),
        };
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(PConn::open(port)?);
        }
        Ok(Publisher {
            kind,
            port,
            conns: v,
            st: PubStats::default(),
            payload: Vec::new(),
            rbuf: vec![0; 64 * 1024],
        })
    }

    /// Whether a message for `chan` can go now. Over HTTP a channel has at
    /// most one publish in flight, so its messages reach the server in
    /// sequence order, as they do on the single Redis connection.
    pub fn can_send(&self, chan: u32) -> bool {
        match self.kind {
            Kind::Redis => self.conns[0].out.len() - self.conns[0].out_off < (4 << 20),
            Kind::Http { .. } => {
                self.conns.iter().any(|c| c.inflight == 0)
                    && !self
                        .conns
                        .iter()
                        .any(|c| c.inflight > 0 && c.chan == Some(chan))
            }
        }
    }

    pub fn outstanding(&self) -> u64 {
        self.st.sent.saturating_sub(self.st.replies)
    }

    /// Publishes one stamped message (the stamp's time is taken now).
    pub fn publish(&mut self, channel: &str, chan: u32, seq: u64, run: u32, size: usize) {
        let stamp = Stamp {
            chan,
            seq,
            t_ns: sys::now_ns(),
            run,
        };
        acct::encode(&mut self.payload, stamp, size);
        let c = match self.kind {
            Kind::Redis => &mut self.conns[0],
            Kind::Http { .. } => match self.conns.iter_mut().find(|c| c.inflight == 0) {
                Some(c) => c,
                None => return,
            },
        };
        match &self.kind {
            Kind::Redis => {
                let _ = write!(
                    c.out,
                    "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{}\r\n${}\r\n",
                    channel.len(),
                    channel,
                    self.payload.len()
                );
                c.out.extend_from_slice(&self.payload);
                c.out.extend_from_slice(b"\r\n");
            }
            Kind::Http { path_prefix } => {
                let _ = write!(
                    c.out,
                    "POST {path_prefix}{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    self.payload.len()
                );
                c.out.extend_from_slice(&self.payload);
            }
        }
        c.inflight += 1;
        c.chan = Some(chan);
        self.st.sent += 1;
        flush(c, &mut self.st);
    }

    /// Writes what is pending and reads replies, waiting up to `timeout_ns`
    /// for the sockets to be ready.
    pub fn io(&mut self, timeout_ns: u64) {
        let mut fds: Vec<libc::pollfd> = self
            .conns
            .iter()
            .map(|c| libc::pollfd {
                fd: c.sock.as_raw_fd(),
                events: libc::POLLIN
                    | if c.out_off < c.out.len() {
                        libc::POLLOUT
                    } else {
                        0
                    },
                revents: 0,
            })
            .collect();
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as i64,
            tv_nsec: (timeout_ns % 1_000_000_000) as i64,
        };
        let n = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as _, &ts, std::ptr::null()) };
        if n <= 0 {
            return;
        }
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            let c = &mut self.conns[i];
            flush(c, &mut self.st);
            loop {
                match c.sock.read(&mut self.rbuf) {
                    Ok(0) => {
                        // Requests in flight on it are lost: errors.
                        self.st.errors += c.inflight;
                        self.st.replies += c.inflight;
                        self.st.reconnects += 1;
                        match PConn::open(self.port) {
                            Ok(nc) => *c = nc,
                            Err(e) => {
                                note(&mut self.st, format!("publisher reconnect: {e}"));
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                        break;
                    }
                    Ok(n) => {
                        let data = &self.rbuf[..n];
                        match self.kind {
                            Kind::Redis => {
                                c.resp.extend_from_slice(data);
                                redis_replies(c, &mut self.st);
                            }
                            Kind::Http { .. } => {
                                let st = &mut self.st;
                                let mut done = 0;
                                let r = c.http.feed(data, &mut |status| {
                                    *st.statuses.entry(status).or_default() += 1;
                                    st.replies += 1;
                                    if !(200..300).contains(&status) {
                                        st.errors += 1;
                                    }
                                    done += 1;
                                });
                                c.inflight -= done.min(c.inflight);
                                if let Err(e) = r {
                                    note(&mut self.st, format!("publisher response: {e}"));
                                }
                            }
                        }
                        if n < self.rbuf.len() {
                            break;
                        }
                    }
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::Interrupted =>
                    {
                        break
                    }
                    Err(e) => {
                        note(&mut self.st, format!("publisher read: {e}"));
                        break;
                    }
                }
            }
        }
    }
}

fn note(st: &mut PubStats, msg: String) {
    if st.notes.len() < 5 {
        st.notes.push(msg);
    }
}

fn flush(c: &mut PConn, st: &mut PubStats) {
    while c.out_off < c.out.len() {
        match c.sock.write(&c.out[c.out_off..]) {
            Ok(n) => c.out_off += n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                break
            }
            Err(e) => {
                note(st, format!("publisher write: {e}"));
                c.out_off = c.out.len();
            }
        }
    }
    if c.out_off == c.out.len() {
        c.out.clear();
        c.out_off = 0;
    }
}

/// Consumes complete RESP replies to PUBLISH (integers; errors counted).
fn redis_replies(c: &mut PConn, st: &mut PubStats) {
    let mut pos = 0;
    while let Some(nl) = c.resp[pos..].iter().position(|&b| b == b'\n') {
        let line = &c.resp[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.first() {
            Some(b':') => {
                st.receivers += std::str::from_utf8(&line[1..])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
            _ => {
                st.errors += 1;
                let l = String::from_utf8_lossy(line).into_owned();
                note(st, format!("redis: {l}"));
            }
        }
        st.replies += 1;
        c.inflight = c.inflight.saturating_sub(1);
        pos += nl + 1;
    }
    c.resp.drain(..pos);
}

/// One message of a publishing plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg {
    pub chan: u32,
    pub seq: u64,
}

/// Round-robin over `channels`: message i goes to channel i % channels,
/// with that channel's next sequence number (from 1).
pub fn round_robin(channels: u32, total: u64) -> Vec<Msg> {
    (0..total)
        .map(|i| Msg {
            chan: (i % channels as u64) as u32,
            seq: i / channels as u64 + 1,
        })
        .collect()
}

/// The last sequence each channel gets in `plan`.
pub fn last_seqs(plan: &[Msg], channels: u32) -> Vec<u64> {
    let mut v = vec![0; channels as usize];
    for m in plan {
        v[m.chan as usize] = v[m.chan as usize].max(m.seq);
    }
    v
}

#[derive(Debug, Clone, Default)]
pub struct PlanRun {
    pub t_start: u64,
    pub t_last_sent: u64,
    pub sent: u64,
    /// Furthest a message fell behind its schedule, ns.
    pub lag_max_ns: u64,
    pub unanswered: u64,
}

/// Sends `plan` at `rate` msg/s, then waits (up to 10 s) for the replies.
pub fn run_plan(
    p: &mut Publisher,
    plan: &[Msg],
    names: &[String],
    rate: f64,
    size: usize,
    run: u32,
) -> PlanRun {
    let t_start = sys::now_ns();
    let interval = 1e9 / rate;
    let mut next = 0usize;
    let mut r = PlanRun {
        t_start,
        ..Default::default()
    };
    loop {
        let now = sys::now_ns();
        let due = (((now - t_start) as f64 / interval) as usize + 1).min(plan.len());
        while next < due && p.can_send(plan[next].chan) {
            let m = plan[next];
            let sched = t_start + (next as f64 * interval) as u64;
            r.lag_max_ns = r.lag_max_ns.max(sys::now_ns().saturating_sub(sched));
            p.publish(&names[m.chan as usize], m.chan, m.seq, run, size);
            next += 1;
        }
        if next == plan.len() {
            if r.t_last_sent == 0 {
                r.t_last_sent = sys::now_ns();
            }
            let waited = sys::now_ns().saturating_sub(r.t_last_sent);
            if p.outstanding() == 0 || waited > 10_000_000_000 || crate::stopping() {
                break;
            }
            p.io(1_000_000);
            continue;
        }
        if crate::stopping() {
            break;
        }
        let next_at = t_start + (next as f64 * interval) as u64;
        let wait = next_at.saturating_sub(sys::now_ns()).min(2_000_000);
        p.io(if next < due { 200_000 } else { wait });
    }
    r.sent = p.st.sent;
    r.unanswered = p.outstanding();
    r
}

/// A blocking Redis command for set-up (PING, FLUSHALL, INFO ...): the
/// reply as text (simple, integer or bulk; arrays flattened by lines).
pub fn redis_cmd(port: u16, args: &[&str]) -> io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16384];
    loop {
        if let Some(v) = parse_reply(&buf) {
            return v;
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed"));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn parse_reply(buf: &[u8]) -> Option<io::Result<String>> {
    fn one(buf: &[u8], out: &mut String) -> Option<Result<usize, String>> {
        let nl = buf.iter().position(|&b| b == b'\n')?;
        let line = String::from_utf8_lossy(&buf[1..nl.saturating_sub(1).max(1)]).into_owned();
        match buf.first()? {
            b'+' | b':' => {
                out.push_str(&line);
                Some(Ok(nl + 1))
            }
            b'-' => Some(Err(line)),
            b'$' => {
                let len: i64 = line.parse().ok()?;
                if len < 0 {
                    return Some(Ok(nl + 1));
                }
                let end = nl + 1 + len as usize;
                if buf.len() < end + 2 {
                    return None;
                }
                out.push_str(&String::from_utf8_lossy(&buf[nl + 1..end]));
                Some(Ok(end + 2))
            }
            b'*' => {
                let n: i64 = line.parse().ok()?;
                let mut pos = nl + 1;
                for _ in 0..n.max(0) {
                    match one(&buf[pos..], out)? {
                        Ok(used) => pos += used,
                        Err(e) => return Some(Err(e)),
                    }
                    out.push('\n');
                }
                Some(Ok(pos))
            }
            _ => Some(Err(format!("unexpected reply {line}"))),
        }
    }
    let mut out = String::new();
    match one(buf, &mut out)? {
        Ok(_) => Some(Ok(out)),
        Err(e) => Some(Err(io::Error::other(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_round_robin() {
        let p = round_robin(3, 7);
        assert_eq!(p[0], Msg { chan: 0, seq: 1 });
        assert_eq!(p[4], Msg { chan: 1, seq: 2 });
        assert_eq!(last_seqs(&p, 3), vec![3, 2, 2]);
    }

    #[test]
    fn resp_replies() {
        assert_eq!(parse_reply(b"+PONG\r\n").unwrap().unwrap(), "PONG");
        assert_eq!(parse_reply(b":12\r\n").unwrap().unwrap(), "12");
        assert_eq!(parse_reply(b"$5\r\nhello\r\n").unwrap().unwrap(), "hello");
        assert!(parse_reply(b"$5\r\nhel").is_none());
        assert_eq!(
            parse_reply(b"*2\r\n$1\r\na\r\n:3\r\n").unwrap().unwrap(),
            "a\n3\n"
        );
        assert!(parse_reply(b"-ERR x\r\n").unwrap().is_err());
    }
}
