//! The publisher: Redis PUBLISH pipelined on one raw RESP connection (for
//! nginx-sse; SPUBLISH on one connection per cluster master for the
//! cluster workload), or HTTP POSTs on keep-alive connections (for nchan),
//! paced to a message rate.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use sse_core::resp::{self, Scanner, Value};

use crate::acct::{self, Stamp};
use crate::http::ResponseReader;
use crate::sys;

pub enum Kind {
    /// `command` (`PUBLISH` or `SPUBLISH`) pipelined on one connection per
    /// port; channel `c` goes on connection `route[c]` (connection 0 when
    /// the route is empty).
    Redis {
        command: &'static str,
        route: Vec<usize>,
    },
    /// POST `{path_prefix}{channel}`.
    Http { path_prefix: String },
}

/// The connection (index into the publisher's) a channel is published on.
fn conn_of(route: &[usize], chan: u32) -> usize {
    route.get(chan as usize).copied().unwrap_or(0)
}

struct PConn {
    port: u16,
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
            port,
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
    conns: Vec<PConn>,
    pub st: PubStats,
    payload: Vec<u8>,
    rbuf: Vec<u8>,
}

impl Publisher {
    /// One connection to 127.0.0.1:`port` for each entry of `ports` (the
    /// same port may appear several times: HTTP keep-alive connections).
    pub fn connect(kind: Kind, ports: &[u16]) -> io::Result<Publisher> {
        if ports.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "publisher without a port",
            ));
        }
        if let Kind::Redis { route, .. } = &kind {
            if route.iter().any(|&c| c >= ports.len()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "publisher route names a connection it does not have",
                ));
            }
        }
        let mut v = Vec::new();
        for &port in ports {
            v.push(PConn::open(port)?);
        }
        Ok(Publisher {
            kind,
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
        match &self.kind {
            Kind::Redis { route, .. } => {
                let c = &self.conns[conn_of(route, chan)];
                c.out.len() - c.out_off < (4 << 20)
            }
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
        let c = match &self.kind {
            Kind::Redis { route, .. } => &mut self.conns[conn_of(route, chan)],
            Kind::Http { .. } => match self.conns.iter_mut().find(|c| c.inflight == 0) {
                Some(c) => c,
                None => return,
            },
        };
        match &self.kind {
            Kind::Redis { command, .. } => {
                resp::encode_command(
                    &mut c.out,
                    &[command.as_bytes(), channel.as_bytes(), &self.payload],
                );
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
                        match PConn::open(c.port) {
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
                            Kind::Redis { .. } => {
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

/// Consumes complete RESP replies to PUBLISH / SPUBLISH (integers; errors
/// counted, a cluster's `-MOVED` included).
fn redis_replies(c: &mut PConn, st: &mut PubStats) {
    let mut pos = 0;
    loop {
        match resp::parse(&c.resp[pos..]) {
            Ok(Some((value, used))) => {
                pos += used;
                match value {
                    Value::Integer(n) => st.receivers += u64::try_from(n).unwrap_or(0),
                    other => {
                        st.errors += 1;
                        let l = match other {
                            Value::Error(msg) => String::from_utf8_lossy(msg).into_owned(),
                            other => format!("unexpected reply {other:?}"),
                        };
                        note(st, format!("redis: {l}"));
                    }
                }
                st.replies += 1;
                c.inflight = c.inflight.saturating_sub(1);
            }
            Ok(None) => break,
            Err(e) => {
                // Nothing more can be read on it: what is in flight is lost.
                note(st, format!("redis: {e}"));
                st.errors += c.inflight;
                st.replies += c.inflight;
                c.inflight = 0;
                pos = c.resp.len();
                break;
            }
        }
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
    let mut req = Vec::new();
    resp::encode_command(&mut req, args);
    s.write_all(&req)?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16384];
    let mut scanner = Scanner::new();
    loop {
        if let Some(v) = parse_reply(&mut scanner, &buf) {
            return v;
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed"));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// The reply at the start of `buf` as text, `None` until it is complete.
fn parse_reply(scanner: &mut Scanner, buf: &[u8]) -> Option<io::Result<String>> {
    fn text(value: &Value<'_>, out: &mut String) -> Result<(), String> {
        match value {
            Value::Simple(s) | Value::Bulk(Some(s)) => out.push_str(&String::from_utf8_lossy(s)),
            Value::Integer(n) => out.push_str(&n.to_string()),
            Value::Error(e) => return Err(String::from_utf8_lossy(e).into_owned()),
            Value::Bulk(None) | Value::Array(None) => {}
            Value::Array(Some(items)) => {
                for item in items {
                    text(item, out)?;
                    out.push('\n');
                }
            }
        }
        Ok(())
    }
    let len = match scanner.scan(buf) {
        Ok(Some(len)) => len,
        Ok(None) => return None,
        Err(e) => return Some(Err(io::Error::other(e))),
    };
    let value = match resp::parse(&buf[..len]) {
        Ok(Some((value, _))) => value,
        Ok(None) => return Some(Err(io::Error::other("incomplete reply"))),
        Err(e) => return Some(Err(io::Error::other(e))),
    };
    let mut out = String::new();
    Some(
        text(&value, &mut out)
            .map(|()| out)
            .map_err(io::Error::other),
    )
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

    fn reply(buf: &[u8]) -> Option<io::Result<String>> {
        parse_reply(&mut Scanner::new(), buf)
    }

    #[test]
    fn resp_replies() {
        assert_eq!(reply(b"+PONG\r\n").unwrap().unwrap(), "PONG");
        assert_eq!(reply(b":12\r\n").unwrap().unwrap(), "12");
        assert_eq!(reply(b"$5\r\nhello\r\n").unwrap().unwrap(), "hello");
        assert!(reply(b"$5\r\nhel").is_none());
        assert_eq!(
            reply(b"*2\r\n$1\r\na\r\n:3\r\n").unwrap().unwrap(),
            "a\n3\n"
        );
        assert!(reply(b"-ERR x\r\n").unwrap().is_err());
        assert!(reply(b"?what\r\n").unwrap().is_err());
        // A reply arriving in pieces, as redis_cmd reads it.
        let mut scanner = Scanner::new();
        let whole = b"$11\r\nhello world\r\n";
        for end in 1..whole.len() {
            assert!(parse_reply(&mut scanner, &whole[..end]).is_none());
        }
        assert_eq!(
            parse_reply(&mut scanner, whole).unwrap().unwrap(),
            "hello world"
        );
    }

    fn pconn_with(replies: &[u8], inflight: u64) -> (PConn, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = PConn::open(listener.local_addr().unwrap().port()).unwrap();
        c.resp.extend_from_slice(replies);
        c.inflight = inflight;
        (c, listener)
    }

    #[test]
    fn publish_replies_are_counted() {
        let mut st = PubStats::default();
        let (mut c, _l) = pconn_with(b":3\r\n:0\r\n-ERR no\r\n:2", 4);
        redis_replies(&mut c, &mut st);
        assert_eq!((st.replies, st.errors, st.receivers), (3, 1, 3));
        assert_eq!(c.inflight, 1);
        assert_eq!(c.resp, b":2");
        assert_eq!(st.notes, ["redis: ERR no"]);
        c.resp.extend_from_slice(b"\r\n");
        redis_replies(&mut c, &mut st);
        assert_eq!((st.replies, st.errors, st.receivers), (4, 1, 5));
        assert!(c.resp.is_empty() && c.inflight == 0);
    }

    /// Reads one complete RESP command from `server`.
    fn read_command(server: &mut std::net::TcpStream) -> Vec<u8> {
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut received = Vec::new();
        let mut scanner = Scanner::new();
        let mut tmp = [0u8; 4096];
        let len = loop {
            if let Some(len) = scanner.scan(&received).unwrap() {
                break len;
            }
            let n = server.read(&mut tmp).unwrap();
            assert!(n > 0, "publisher closed");
            received.extend_from_slice(&tmp[..n]);
        };
        assert_eq!(len, received.len());
        received
    }

    #[test]
    fn publish_commands_are_resp_arrays() {
        let (c, listener) = pconn_with(b"", 0);
        let (mut server, _) = listener.accept().unwrap();
        let mut p = Publisher {
            kind: Kind::Redis {
                command: "PUBLISH",
                route: Vec::new(),
            },
            conns: vec![c],
            st: PubStats::default(),
            payload: Vec::new(),
            rbuf: Vec::new(),
        };
        p.publish("bench:7", 7, 1, 1, 64);
        assert_eq!(p.st.sent, 1);
        // What Redis receives is PUBLISH <channel> <payload>.
        let received = read_command(&mut server);
        let (value, _) = resp::parse(&received).unwrap().unwrap();
        assert_eq!(
            value,
            Value::Array(Some(vec![
                Value::Bulk(Some(b"PUBLISH")),
                Value::Bulk(Some(b"bench:7")),
                Value::Bulk(Some(&p.payload)),
            ]))
        );
    }

    #[test]
    fn sharded_publishes_go_to_the_channels_master() {
        let (l0, l1) = (
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        );
        let ports = [
            l0.local_addr().unwrap().port(),
            l1.local_addr().unwrap().port(),
        ];
        let kind = |route: Vec<usize>| Kind::Redis {
            command: "SPUBLISH",
            route,
        };
        assert!(Publisher::connect(kind(vec![0, 2]), &ports).is_err());
        assert!(Publisher::connect(kind(vec![]), &[]).is_err());
        // Channel 0 on connection 1, channel 1 on connection 0.
        let mut p = Publisher::connect(kind(vec![1, 0]), &ports).unwrap();
        let (mut s0, mut s1) = (l0.accept().unwrap().0, l1.accept().unwrap().0);
        assert!(p.can_send(0) && p.can_send(1));
        p.publish("a", 0, 1, 1, 64);
        let to_1 = read_command(&mut s1);
        p.publish("b", 1, 1, 1, 64);
        let to_0 = read_command(&mut s0);
        for (raw, chan) in [(&to_1, &b"a"[..]), (&to_0, b"b")] {
            let (value, _) = resp::parse(raw).unwrap().unwrap();
            let Value::Array(Some(items)) = value else {
                panic!("{value:?}")
            };
            assert_eq!(items[0], Value::Bulk(Some(b"SPUBLISH")));
            assert_eq!(items[1], Value::Bulk(Some(chan)));
        }
        assert_eq!(p.outstanding(), 2);
    }
}
