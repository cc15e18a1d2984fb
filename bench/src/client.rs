//! The subscriber side: thousands of non-blocking SSE connections on one
//! epoll loop, each parsed incrementally and accounted per subscriber.

use std::os::fd::RawFd;

use crate::acct::{self, Histogram, Outcome, SubAcct};
use crate::http::{SseItem, SseStream, StreamItem};
use crate::sys::{self, Epoll, EV_ERR, EV_IN, EV_OUT};

/// Deliberate client-side faults, for `self-check`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientInject {
    /// Subscribers of channel `.0` drop every `.1`-th event they receive
    /// (counted per subscriber) before accounting.
    pub drop_every: Option<(u32, u64)>,
    /// Subscriber `.0` accounts its `.1`-th event twice.
    pub double: Option<(u32, u64)>,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Sockets created.
    pub opened: u64,
    /// Streams whose response head said 200.
    pub connected: u64,
    pub bad_status: u64,
    /// Failed before a response head (refused, reset, EOF).
    pub connect_errors: u64,
    /// Streams that ended (EOF, reset, end of body) after a 200 head.
    pub server_closed: u64,
    pub parse_errors: u64,
    pub comments: u64,
    pub retries: u64,
    /// Events whose data is not one of this run's stamps.
    pub foreign: u64,
    pub warmups: u64,
    pub injected_drops: u64,
    pub injected_doubles: u64,
    /// The first few errors, for the report.
    pub errors: Vec<String>,
}

impl Stats {
    fn note(&mut self, msg: String) {
        if self.errors.len() < 5 {
            self.errors.push(msg);
        }
    }
}

/// The parts of a connection an event may read or change.
struct ConnView {
    /// Subscriber index (stream mode) or cycle number (churn mode).
    sub: u32,
    chan: u32,
    headed: bool,
}

struct Conn {
    fd: RawFd,
    v: ConnView,
    written: usize,
    connecting: bool,
    t_open: u64,
    stream: SseStream,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Stream,
    Churn,
}

/// Everything an event updates; kept apart from the connection table so a
/// connection can be parsed while its results are recorded.
pub struct Sink {
    pub run: u32,
    pub subs: Vec<SubAcct>,
    /// Publish → receive latency of every counted delivery, ns.
    pub latency: Histogram,
    /// Socket creation → first response byte (churn), ns.
    pub ttfb: Histogram,
    pub st: Stats,
    pub inject: ClientInject,
    raw_counts: Vec<u64>,
    /// Distinct (channel, sequence) arrivals summed over subscribers.
    pub distinct: u64,
    /// Streams that got a 200 head or failed.
    settled: u64,
    /// When the last counted delivery arrived.
    pub last_delivery_ns: u64,
    /// Latency per send second (only with SSE_BENCH_TIMELINE set).
    pub timeline: Option<std::collections::BTreeMap<usize, Histogram>>,
}

enum Act {
    Keep,
    Close,
}

impl Sink {
    fn on_item(&mut self, c: &mut ConnView, item: StreamItem, now: u64) -> Act {
        match item {
            StreamItem::Head(h) => {
                self.settled += 1;
                if h.status == 200 {
                    c.headed = true;
                    self.st.connected += 1;
                } else {
                    self.st.bad_status += 1;
                    self.st
                        .note(format!("HTTP {} for channel {}", h.status, c.chan));
                    return Act::Close;
                }
            }
            StreamItem::End => return Act::Close,
            StreamItem::Sse(SseItem::Comment) => self.st.comments += 1,
            StreamItem::Sse(SseItem::Retry(_)) => self.st.retries += 1,
            StreamItem::Sse(SseItem::Event { data, .. }) => {
                let Some(s) = acct::decode(data).filter(|s| s.run == self.run) else {
                    self.st.foreign += 1;
                    return Act::Keep;
                };
                let sub = c.sub as usize;
                if s.seq == 0 {
                    self.st.warmups += 1;
                    self.subs[sub].warm = true;
                    return Act::Keep;
                }
                self.raw_counts[sub] += 1;
                let k = self.raw_counts[sub];
                if let Some((ch, n)) = self.inject.drop_every {
                    if self.subs[sub].chan == ch && k % n == 0 {
                        self.st.injected_drops += 1;
                        return Act::Keep;
                    }
                }
                let times = match self.inject.double {
                    Some((d, kth)) if d == c.sub && kth == k => {
                        self.st.injected_doubles += 1;
                        2
                    }
                    _ => 1,
                };
                for _ in 0..times {
                    match self.subs[sub].record(s.chan, s.seq) {
                        Outcome::New | Outcome::InOrder | Outcome::OutOfOrder => self.distinct += 1,
                        Outcome::Duplicate | Outcome::Misrouted => {}
                    }
                    self.latency.record(now.saturating_sub(s.t_ns));
                    if let Some(tl) = &mut self.timeline {
                        // (send second, latency) for SSE_BENCH_TIMELINE
                        let sec = (s.t_ns / 1_000_000_000) as usize;
                        tl.entry(sec)
                            .or_default()
                            .record(now.saturating_sub(s.t_ns));
                    }
                }
                self.last_delivery_ns = now;
            }
        }
        Act::Keep
    }
}

/// Where the event loop's time goes.
#[derive(Debug, Clone, Default)]
pub struct LoopStats {
    pub wakeups: u64,
    pub events: u64,
    pub max_events: u64,
    pub wait_ns: u64,
    pub busy_ns: u64,
    pub max_busy_ns: u64,
}

pub struct Engine {
    pub loop_stats: LoopStats,
    ep: Epoll,
    evs: Vec<(u64, u32)>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: usize,
    rbuf: Vec<u8>,
    port: u16,
    path_prefix: String,
    chan_names: Vec<String>,
    src_next: u32,
    mode: Mode,
    churn_done: u64,
    pub sink: Sink,
}

impl Engine {
    /// Subscribers will ask for `GET {path_prefix}{channel name}`.
    pub fn new(
        port: u16,
        run: u32,
        path_prefix: &str,
        chan_names: Vec<String>,
    ) -> std::io::Result<Engine> {
        Ok(Engine {
            loop_stats: LoopStats::default(),
            ep: Epoll::new()?,
            evs: Vec::with_capacity(4096),
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            rbuf: vec![0; 256 * 1024],
            port,
            path_prefix: path_prefix.to_string(),
            chan_names,
            src_next: 0,
            mode: Mode::Stream,
            churn_done: 0,
            sink: Sink {
                run,
                subs: Vec::new(),
                latency: Histogram::default(),
                ttfb: Histogram::default(),
                st: Stats::default(),
                inject: ClientInject::default(),
                raw_counts: Vec::new(),
                distinct: 0,
                settled: 0,
                last_delivery_ns: 0,
                timeline: std::env::var_os("SSE_BENCH_TIMELINE").map(|_| Default::default()),
            },
        })
    }

    pub fn live(&self) -> usize {
        self.live
    }

    fn open(&mut self, sub: u32, chan: u32) {
        // Spread source addresses over 127.0.0.2-251: each has its own
        // ephemeral port range toward the server.
        let src = [127, 0, 0, 2 + (self.src_next % 250) as u8];
        self.src_next = self.src_next.wrapping_add(1);
        self.sink.st.opened += 1;
        let fd = match sys::connect_nb(self.port, src) {
            Ok(fd) => fd,
            Err(e) => {
                self.sink.st.connect_errors += 1;
                self.sink.settled += 1;
                self.sink.st.note(format!("connect: {e}"));
                if self.mode == Mode::Churn {
                    self.churn_done += 1;
                }
                return;
            }
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if let Err(e) = self.ep.add(fd, slot as u64, EV_OUT) {
            sys::close(fd);
            self.free.push(slot);
            self.sink.st.connect_errors += 1;
            self.sink.settled += 1;
            self.sink.st.note(format!("epoll_ctl: {e}"));
            if self.mode == Mode::Churn {
                self.churn_done += 1;
            }
            return;
        }
        self.conns[slot] = Some(Conn {
            fd,
            v: ConnView {
                sub,
                chan,
                headed: false,
            },
            written: 0,
            connecting: true,
            t_open: sys::now_ns(),
            stream: SseStream::default(),
        });
        self.live += 1;
    }

    fn request(&self, chan: u32) -> Vec<u8> {
        format!(
            "GET {}{} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
            self.path_prefix, self.chan_names[chan as usize]
        )
        .into_bytes()
    }

    fn drop_conn(&mut self, slot: usize, c: Conn) {
        sys::close(c.fd); // SO_LINGER 0: an RST, no TIME_WAIT
        self.free.push(slot);
        self.live -= 1;
        if self.mode == Mode::Churn {
            self.churn_done += 1;
        }
    }

    /// Handles whatever is ready within `timeout_ms`.
    pub fn poll(&mut self, timeout_ms: i32) {
        let mut evs = std::mem::take(&mut self.evs);
        let t_wait = sys::now_ns();
        self.ep.wait(timeout_ms, &mut evs);
        let t0 = sys::now_ns();
        self.loop_stats.wait_ns += t0 - t_wait;
        self.loop_stats.wakeups += 1;
        self.loop_stats.events += evs.len() as u64;
        self.loop_stats.max_events = self.loop_stats.max_events.max(evs.len() as u64);
        for &(token, events) in &evs {
            let slot = token as usize;
            let Some(mut c) = self.conns[slot].take() else {
                continue;
            };
            let keep = if c.connecting {
                self.on_connect(slot, &mut c, events)
            } else {
                self.on_read(&mut c)
            };
            if keep {
                self.conns[slot] = Some(c);
            } else {
                self.drop_conn(slot, c);
            }
        }
        self.evs = evs;
        let busy = sys::now_ns() - t0;
        self.loop_stats.busy_ns += busy;
        self.loop_stats.max_busy_ns = self.loop_stats.max_busy_ns.max(busy);
    }

    fn on_connect(&mut self, slot: usize, c: &mut Conn, events: u32) -> bool {
        if let Some(e) = sys::so_error(c.fd) {
            self.sink.st.connect_errors += 1;
            self.sink.settled += 1;
            self.sink.st.note(format!("connect: {e}"));
            return false;
        }
        if events & EV_OUT == 0 {
            return true;
        }
        let req = self.request(c.v.chan);
        match sys::write(c.fd, &req[c.written..]) {
            Ok(n) => c.written += n,
            Err(e) if sys::would_block(&e) => return true,
            Err(e) => {
                self.sink.st.connect_errors += 1;
                self.sink.settled += 1;
                self.sink.st.note(format!("write: {e}"));
                return false;
            }
        }
        if c.written == req.len() {
            c.connecting = false;
            if let Err(e) = self.ep.modify(c.fd, slot as u64, EV_IN | EV_ERR) {
                self.sink.st.note(format!("epoll_ctl: {e}"));
                return false;
            }
        }
        true
    }

    fn on_read(&mut self, c: &mut Conn) -> bool {
        let n = match sys::read(c.fd, &mut self.rbuf) {
            Ok(n) => n,
            Err(e) if sys::would_block(&e) => return true,
            Err(e) => {
                self.lost(c, &format!("read: {e}"));
                return false;
            }
        };
        if n == 0 {
            self.lost(c, "EOF");
            return false;
        }
        let now = sys::now_ns();
        if self.mode == Mode::Churn {
            self.sink.ttfb.record(now - c.t_open);
            if self.rbuf[..n].starts_with(b"HTTP/1.1 200") {
                self.sink.st.connected += 1;
            } else {
                self.sink.st.bad_status += 1;
                let line = String::from_utf8_lossy(&self.rbuf[..n.min(40)]).into_owned();
                self.sink.st.note(format!("churn: first bytes {line:?}"));
            }
            self.sink.settled += 1;
            return false;
        }
        let sink = &mut self.sink;
        let mut act = Act::Keep;
        let (stream, view) = (&mut c.stream, &mut c.v);
        let r = stream.feed(&self.rbuf[..n], &mut |item| {
            if let Act::Close = sink.on_item(view, item, now) {
                act = Act::Close;
            }
        });
        if let Err(e) = r {
            self.sink.st.parse_errors += 1;
            self.sink.st.note(format!("parse: {e}"));
            if !c.v.headed {
                self.sink.settled += 1;
            }
            return false;
        }
        match act {
            Act::Keep => true,
            Act::Close => {
                if c.v.headed {
                    self.sink.st.server_closed += 1;
                }
                false
            }
        }
    }

    fn lost(&mut self, c: &Conn, why: &str) {
        if c.v.headed {
            self.sink.st.server_closed += 1;
            self.sink
                .st
                .note(format!("stream of subscriber {} ended: {why}", c.v.sub));
        } else {
            self.sink.st.connect_errors += 1;
            self.sink.settled += 1;
            self.sink.st.note(format!("before response head: {why}"));
        }
    }

    /// Opens one stream per entry of `chans` (subscriber i reads channel
    /// `chans[i]`), at most `inflight` handshakes at a time, and waits until
    /// each has its 200 head or failed, or `timeout_ms` passed.
    /// Returns the seconds it took.
    pub fn connect_subs(&mut self, chans: &[u32], inflight: usize, timeout_ms: u64) -> f64 {
        self.mode = Mode::Stream;
        self.sink.subs = chans.iter().map(|&c| SubAcct::new(c)).collect();
        self.sink.raw_counts = vec![0; chans.len()];
        self.sink.settled = 0;
        let t0 = sys::now_ns();
        let mut next = 0usize;
        while (self.sink.settled as usize) < chans.len()
            && sys::now_ns() - t0 < timeout_ms * 1_000_000
        {
            while next < chans.len() && next - (self.sink.settled as usize).min(next) < inflight {
                self.open(next as u32, chans[next]);
                next += 1;
            }
            self.poll(5);
            if crate::stopping() {
                break;
            }
        }
        (sys::now_ns() - t0) as f64 / 1e9
    }

    /// Every subscriber has seen a warm-up message.
    pub fn all_warm(&self) -> bool {
        self.sink.subs.iter().all(|s| s.warm)
    }

    /// Channels with a subscriber that has not seen a warm-up message yet.
    pub fn cold_channels(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .sink
            .subs
            .iter()
            .filter(|s| !s.warm)
            .map(|s| s.chan)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn close_all(&mut self) {
        for slot in 0..self.conns.len() {
            if let Some(c) = self.conns[slot].take() {
                self.drop_conn(slot, c);
            }
        }
    }

    /// `total` connect / first-bytes / close cycles with `concurrency`
    /// connections at a time, over `nchan` channels round-robin. Returns
    /// the seconds it took; per-cycle results are in `sink`.
    pub fn churn(&mut self, total: u64, concurrency: usize, nchan: u32, timeout_ms: u64) -> f64 {
        self.mode = Mode::Churn;
        self.churn_done = 0;
        self.sink.settled = 0;
        let t0 = sys::now_ns();
        let mut started = 0u64;
        while self.churn_done < total && sys::now_ns() - t0 < timeout_ms * 1_000_000 {
            while started < total && self.live < concurrency {
                self.open(started as u32, (started % nchan as u64) as u32);
                started += 1;
            }
            if started >= total && self.live == 0 {
                break;
            }
            self.poll(5);
            if crate::stopping() {
                break;
            }
        }
        self.close_all();
        self.mode = Mode::Stream;
        (sys::now_ns() - t0) as f64 / 1e9
    }
}
