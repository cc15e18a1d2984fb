//! One Redis connection inside nginx's event loop: connect, write, read,
//! detect a dead peer, reconnect with backoff, and log each change once.
//!
//! States: `Down` (waiting for the reconnect timer) → `Connecting` (TCP
//! handshake in progress) → `Handshake` (TCP is up; the protocol's greeting
//! is sent, ending with a PING, and Redis has not answered yet) → `Ready`
//! (that PING was answered: Redis accepted us) → back to `Down` on any
//! failure. A connection counts as up only once Redis has answered, so a
//! server that accepts TCP and then refuses (wrong password, ACL, closing at
//! once, answering nonsense) is a failed attempt: the backoff keeps growing
//! and the failure is logged once, not once per attempt.
//!
//! What is said on the connection is its [`Protocol`]'s business.

use std::ffi::c_void;
use std::ptr;

use ngx::ffi::{
    ngx_add_timer, ngx_close_connection, ngx_connection_t, ngx_del_timer, ngx_event_connect_peer,
    ngx_event_get_peer, ngx_event_t, ngx_handle_read_event, ngx_handle_write_event, ngx_int_t,
    ngx_log_t, ngx_msec_t, ngx_peer_connection_t, ngx_post_event, ngx_posted_events, ngx_random,
    ngx_str_t, NGX_AGAIN, NGX_LOG_CRIT, NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_LOG_WARN, NGX_OK,
};
use ngx::ngx_log_error;
use sse_core::backoff::Backoff;
use sse_core::resp::{self, Scanner, Value};

use super::{
    ping_handler, read_handler, reconnect_handler, write_handler, Link, Peer, RedisEvent, Role,
};
use crate::metrics;
use crate::ngx_ext::{cycle_log, TimerIdent};
use sse_core::metrics::{Counter, Gauge};

const CONNECT_TIMEOUT_MS: ngx_msec_t = 3_000;
const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 5_000;
/// A PING goes out at this interval; no byte back by the next one means the
/// connection is dead even though TCP has not noticed.
const PING_INTERVAL_MS: ngx_msec_t = 15_000;
/// Bytes read per event before yielding to the rest of the event loop.
const READ_BUDGET: usize = 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// What is said on a connection, whatever the sink.
pub trait Conversation {
    /// How log lines name the connection ("redis", "redis (history)").
    const LABEL: &'static str;
    /// The name of this connection in log lines (a label that depends on
    /// the instance).
    fn label(&self) -> &'static str {
        Self::LABEL
    }
    /// Appends the periodic liveness PING.
    fn keepalive(&mut self, out: &mut Vec<u8>);
    /// The connection dropped: forget what was in flight.
    fn dropped(&mut self);
    /// Commands sent and not yet answered.
    fn in_flight(&self) -> usize;
}

/// What is said on a connection and told to `S` (the worker).
pub trait Protocol<S: ?Sized>: Conversation {
    /// TCP is up: appends the greeting (AUTH with `auth`, then the role's
    /// commands), ending with the PING whose answer makes the connection up.
    fn greet(&mut self, out: &mut Vec<u8>, auth: Option<&[Vec<u8>]>, sink: &S);
    /// Handles one reply. `Ok(true)`: it answered the greeting's PING.
    /// `Err`: the connection cannot go on (the text is logged).
    fn reply(&mut self, value: &Value<'_>, sink: &mut S) -> Result<bool, String>;
    /// The connection came up (`again`: after a loss): tell the sink; the
    /// text completes the log line.
    fn up(&mut self, again: bool, sink: &mut S) -> String;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Down,
    Connecting,
    /// TCP is up and the greeting is sent; Redis has not answered.
    Handshake,
    Ready,
    Closed,
}

pub struct Connection<P> {
    link: Link,
    state: State,
    pub(super) protocol: P,
    /// Where it may connect: tried in turn, the next after each failure
    /// (Sentinels); none yet for a master that Sentinel has not named.
    peers: Vec<Peer>,
    peer: usize,
    /// The current peer's name as nginx's connect code takes it.
    name: ngx_str_t,
    /// The arguments of AUTH, if the URL has credentials.
    auth: Option<Vec<Vec<u8>>>,
    conn: *mut ngx_connection_t,
    rbuf: Vec<u8>,
    /// Where the reply being received ends, found in one pass however many
    /// reads it takes (a history reply can be tens of MB).
    scanner: Scanner,
    pub(super) wbuf: Vec<u8>,
    wpos: usize,
    reconnect: ngx_event_t,
    ping: ngx_event_t,
    /// Nothing received since the last PING.
    awaiting_pong: bool,
    backoff: Backoff,
    /// A failure was logged and no success since: do not log again.
    failure_logged: bool,
    ever_connected: bool,
    /// The last error logged, kept across attempts: each distinct one is
    /// logged once until the connection works again.
    last_error: String,
    /// A copy of the cycle log at CRIT level, given to nginx's connect code
    /// so that each failed attempt does not log a line of its own.
    quiet_log: ngx_log_t,
    /// What the timers' `data` points to (it carries the link).
    timer_ident: TimerIdent,
}

/// The arguments of AUTH for these credentials (none without a password).
pub fn auth_args(username: Option<&str>, password: Option<&str>) -> Option<Vec<Vec<u8>>> {
    password.map(|password| {
        let user = username.iter().map(|u| u.as_bytes().to_vec());
        user.chain([password.as_bytes().to_vec()]).collect()
    })
}

impl<P: Conversation> Connection<P> {
    pub fn new(peers: Vec<Peer>, auth: Option<Vec<Vec<u8>>>, link: Link, protocol: P) -> Box<Self> {
        // SAFETY: the cycle log is valid for the worker's life; ngx_event_t
        // is a C struct for which all-zero is the initial state.
        let (quiet_log, reconnect, ping) =
            unsafe { (*cycle_log(), std::mem::zeroed(), std::mem::zeroed()) };
        let mut connection = Box::new(Connection {
            link,
            state: State::Down,
            protocol,
            peers,
            peer: 0,
            name: ngx_str_t::empty(),
            auth,
            conn: ptr::null_mut(),
            rbuf: Vec::with_capacity(READ_CHUNK),
            scanner: Scanner::new(),
            wbuf: Vec::new(),
            wpos: 0,
            reconnect,
            ping,
            awaiting_pong: false,
            backoff: Backoff::new(BACKOFF_MIN_MS, BACKOFF_MAX_MS),
            failure_logged: false,
            ever_connected: false,
            last_error: String::new(),
            quiet_log,
            timer_ident: TimerIdent::new(link.tag()),
        });
        connection.quiet_log.log_level = NGX_LOG_CRIT as usize;
        let log = cycle_log();
        let data = connection.timer_ident.as_data();
        for (ev, handler) in [
            (
                &mut connection.reconnect,
                reconnect_handler as unsafe extern "C" fn(*mut ngx_event_t),
            ),
            (&mut connection.ping, ping_handler),
        ] {
            ev.handler = Some(handler);
            ev.log = log;
            ev.data = data;
            // Our timers never keep an exiting worker alive.
            ev.set_cancelable(1);
        }
        connection
    }

    fn address(&self) -> String {
        match self.peers.get(self.peer) {
            Some(peer) => format!(
                "{} at {}",
                self.protocol.label(),
                String::from_utf8_lossy(peer.name())
            ),
            None => format!("{} (no master known yet)", self.protocol.label()),
        }
    }

    /// Connects on the next turn of the event loop (a connection created
    /// while the worker runs, outside any event of its own).
    pub fn start_soon(&mut self) {
        // SAFETY: the reconnect timer is ours; the connection outlives it.
        unsafe { ngx_add_timer(&mut self.reconnect, 1) };
    }

    /// Sentinel named a new master: go there now (dropping a connection to
    /// the old one), unless it is where this connection already goes.
    pub fn set_peer(&mut self, peer: Peer) {
        if self.state == State::Closed || self.peers == [peer.clone()] {
            return;
        }
        if !self.conn.is_null() {
            ngx_log_error!(
                NGX_LOG_NOTICE,
                cycle_log(),
                "sse: leaving {} for the new master",
                self.address()
            );
        }
        self.drop_connection();
        self.peers = vec![peer];
        self.peer = 0;
        self.backoff.reset();
        self.failure_logged = false;
        self.last_error.clear();
        // SAFETY: the reconnect timer is ours; re-adding moves it.
        unsafe { ngx_add_timer(&mut self.reconnect, 1) };
    }

    /// Starts over on the next address (the next Sentinel), after the
    /// backoff delay: what this connection said may be stale.
    pub fn restart(&mut self) {
        if self.state == State::Closed {
            return;
        }
        self.drop_connection();
        self.schedule_reconnect();
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Commands sent and not yet answered (a metric).
    pub fn in_flight(&self) -> usize {
        self.protocol.in_flight()
    }

    fn up_gauge(&self) -> Option<Gauge> {
        if self.link.shard > 0 {
            return None;
        }
        match self.link.role {
            Role::Subscriber => Some(Gauge::SubscriberUp),
            Role::Commands => Some(Gauge::CommandsUp),
            Role::Sentinel => None,
        }
    }

    /// Whether TCP is up: commands may be written.
    pub(super) fn is_live(&self) -> bool {
        matches!(self.state, State::Handshake | State::Ready)
    }

    pub fn handle<S: ?Sized>(&mut self, event: RedisEvent, ev: *mut ngx_event_t, sink: &mut S)
    where
        P: Protocol<S>,
    {
        match (event, self.state) {
            (_, State::Closed) => {}
            (RedisEvent::Start | RedisEvent::Reconnect, State::Down) => self.connect(sink),
            (RedisEvent::Writable, State::Connecting) => self.finish_connect(ev, sink),
            (RedisEvent::Writable, State::Handshake | State::Ready) => self.write_out(),
            (RedisEvent::Readable, State::Handshake | State::Ready) => self.read(ev, sink),
            (RedisEvent::Ping, State::Handshake | State::Ready) => self.ping(),
            _ => {}
        }
    }

    fn connect<S: ?Sized>(&mut self, sink: &mut S)
    where
        P: Protocol<S>,
    {
        let Some(peer) = self.peers.get_mut(self.peer) else {
            // No master known yet: Sentinel's answer starts the connection.
            return;
        };
        // SAFETY: all-zero is the initial state of ngx_peer_connection_t.
        let mut pc: ngx_peer_connection_t = unsafe { std::mem::zeroed() };
        // The address and name live in `peers`, which do not change while a
        // connection exists (set_peer drops it first).
        self.name = ngx_str_t {
            len: peer.name.len(),
            data: peer.name.as_mut_ptr(),
        };
        pc.sockaddr = &mut peer.addr as *mut libc::sockaddr_storage as *mut ngx::ffi::sockaddr;
        pc.socklen = peer.socklen;
        pc.name = &mut self.name;
        pc.get = Some(ngx_event_get_peer);
        pc.log = &mut self.quiet_log;
        pc.set_log_error(ngx::ffi::ngx_connection_log_error_e_NGX_ERROR_INFO);
        pc.tries = 1;
        // SAFETY: `pc` is initialised above; nginx fills in its connection.
        let rc = unsafe { ngx_event_connect_peer(&mut pc) };
        if rc != NGX_OK as ngx_int_t && rc != NGX_AGAIN as ngx_int_t {
            let err = std::io::Error::last_os_error();
            self.conn = pc.connection;
            self.failed(&format!("connect() failed: {err}"));
            return;
        }
        let c = pc.connection;
        let log = cycle_log();
        // SAFETY: on NGX_OK or NGX_AGAIN nginx returns a live connection with
        // its two events, which this connection now owns.
        unsafe {
            (*c).log = log;
            (*(*c).read).log = log;
            (*(*c).write).log = log;
            (*(*c).read).handler = Some(read_handler);
            (*(*c).write).handler = Some(write_handler);
            (*c).data = self.link.tag();
        }
        self.conn = c;
        sse_debug!(log, "sse: connecting to {}", self.address());
        if rc == NGX_AGAIN as ngx_int_t {
            self.state = State::Connecting;
            // SAFETY: the write event of the live connection above.
            unsafe { ngx_add_timer((*c).write, CONNECT_TIMEOUT_MS) };
            return;
        }
        self.connected(sink);
    }

    fn finish_connect<S: ?Sized>(&mut self, ev: *mut ngx_event_t, sink: &mut S)
    where
        P: Protocol<S>,
    {
        // SAFETY: `ev` is the write event of our live connection.
        unsafe {
            if (*ev).timedout() != 0 {
                self.failed("connect timed out");
                return;
            }
            if (*ev).timer_set() != 0 {
                ngx_del_timer(ev);
            }
        }
        if let Err(err) = self.socket_error() {
            self.failed(&format!("connect() failed: {err}"));
            return;
        }
        self.connected(sink);
    }

    /// The outcome of a non-blocking connect, from `SO_ERROR`.
    fn socket_error(&self) -> std::io::Result<()> {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the connection is live; getsockopt writes at most `len`
        // bytes into `err`.
        let rc = unsafe {
            libc::getsockopt(
                (*self.conn).fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut libc::c_int as *mut c_void,
                &mut len,
            )
        };
        match (rc, err) {
            (-1, _) => Err(std::io::Error::last_os_error()),
            (_, 0) => Ok(()),
            (_, err) => Err(std::io::Error::from_raw_os_error(err)),
        }
    }

    /// TCP is up: greet. The connection is up when Redis answers the
    /// greeting's PING ([`Connection::established`]).
    fn connected<S: ?Sized>(&mut self, sink: &mut S)
    where
        P: Protocol<S>,
    {
        self.state = State::Handshake;
        self.wbuf.clear();
        self.wpos = 0;
        self.scanner.reset();
        self.protocol.dropped();
        // The greeting's PING is outstanding: no answer by the next PING
        // tick means a server that took the connection and went silent.
        self.awaiting_pong = true;
        // SAFETY: the ping timer is ours; the connection outlives it.
        unsafe { ngx_add_timer(&mut self.ping, PING_INTERVAL_MS) };
        self.protocol
            .greet(&mut self.wbuf, self.auth.as_deref(), sink);
        self.write_out();
    }

    /// Redis answered the greeting: the connection is up.
    fn established<S: ?Sized>(&mut self, sink: &mut S)
    where
        P: Protocol<S>,
    {
        self.state = State::Ready;
        self.backoff.reset();
        self.last_error.clear();
        self.failure_logged = false;
        let again = self.ever_connected;
        self.ever_connected = true;
        if let Some(gauge) = self.up_gauge() {
            metrics::gauge_set(gauge, 1);
        }
        if again {
            match self.link.role {
                Role::Subscriber => metrics::count(Counter::SubscriberReconnects, 1),
                Role::Commands => metrics::count(Counter::CommandsReconnects, 1),
                Role::Sentinel => {}
            }
        }
        let detail = self.protocol.up(again, sink);
        let verb = if again {
            "reconnected to"
        } else {
            "connected to"
        };
        ngx_log_error!(
            NGX_LOG_NOTICE,
            cycle_log(),
            "sse: {verb} {}{detail}",
            self.address()
        );
    }

    fn ping(&mut self) {
        if self.awaiting_pong {
            self.lost("no answer to PING");
            return;
        }
        self.awaiting_pong = true;
        self.protocol.keepalive(&mut self.wbuf);
        // SAFETY: the ping timer is ours.
        unsafe { ngx_add_timer(&mut self.ping, PING_INTERVAL_MS) };
        self.write_out();
    }

    /// Writes the write buffer out, as far as the socket takes it.
    pub(super) fn write_out(&mut self) {
        if !self.is_live() {
            return;
        }
        let c = self.conn;
        while self.wpos < self.wbuf.len() {
            // SAFETY: a live state implies a live connection.
            let Some(send) = (unsafe { (*c).send }) else {
                return self.lost("connection cannot send");
            };
            let rest = &self.wbuf[self.wpos..];
            // SAFETY: `send` reads at most `rest.len()` bytes from `rest`.
            let n = unsafe { send(c, rest.as_ptr() as *mut u8, rest.len()) };
            if n > 0 {
                self.wpos += n as usize;
            } else if n == NGX_AGAIN as isize {
                // SAFETY: the write event of the live connection.
                if unsafe { ngx_handle_write_event((*c).write, 0) } != NGX_OK as ngx_int_t {
                    self.lost("cannot wait for write");
                }
                return;
            } else {
                return self.lost("send() failed");
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.wbuf.capacity() > 4 * READ_CHUNK {
            // A burst of subscriptions passed: give the memory back.
            self.wbuf = Vec::new();
        }
    }

    fn read<S: ?Sized>(&mut self, ev: *mut ngx_event_t, sink: &mut S)
    where
        P: Protocol<S>,
    {
        let c = self.conn;
        let mut budget = READ_BUDGET;
        loop {
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            let spare = self.rbuf.capacity() - self.rbuf.len();
            // SAFETY: a live state implies a live connection.
            let Some(recv) = (unsafe { (*c).recv }) else {
                return self.lost("connection cannot receive");
            };
            // SAFETY: `recv` writes at most `spare` bytes into the spare
            // capacity of `rbuf`, which set_len then marks initialised.
            let n = unsafe {
                let n = recv(c, self.rbuf.as_mut_ptr().add(self.rbuf.len()), spare);
                if n > 0 {
                    self.rbuf.set_len(self.rbuf.len() + n as usize);
                }
                n
            };
            if n == NGX_AGAIN as isize {
                break;
            }
            if n == 0 {
                return self.lost("closed by redis");
            }
            if n < 0 {
                return self.lost("recv() failed");
            }
            self.awaiting_pong = false;
            if !self.dispatch(sink) {
                return;
            }
            budget = budget.saturating_sub(n as usize);
            // SAFETY: `ev` is the read event of the live connection.
            if budget == 0 && unsafe { (*ev).ready() } != 0 {
                // Let client writes and timers run; continue next turn.
                // SAFETY: as above; nginx's posted queue outlives the event.
                unsafe { ngx_post_event(ev, &raw mut ngx_posted_events) };
                return;
            }
        }
        // SAFETY: as above.
        if unsafe { ngx_handle_read_event(ev, 0) } != NGX_OK as ngx_int_t {
            self.lost("cannot wait for read");
        }
    }

    /// Handles every complete reply in the read buffer. Returns false if the
    /// connection was dropped.
    fn dispatch<S: ?Sized>(&mut self, sink: &mut S) -> bool
    where
        P: Protocol<S>,
    {
        // Replies borrow from the buffer while the protocol and this
        // connection handle them: take the buffer out meanwhile.
        let mut buf = std::mem::take(&mut self.rbuf);
        let mut used = 0;
        let alive = loop {
            let value = match self.next_value(&buf[used..]) {
                Ok(Some((value, n))) => {
                    used += n;
                    value
                }
                Ok(None) => break true,
                Err(e) => {
                    self.lost(&e);
                    break false;
                }
            };
            match self.protocol.reply(&value, sink) {
                Ok(true) => self.established(sink),
                Ok(false) => {}
                Err(reason) => {
                    self.refused(&reason);
                    break false;
                }
            }
        };
        if alive {
            buf.drain(..used);
        } else {
            buf.clear();
        }
        if buf.capacity() > 4 * READ_CHUNK && buf.len() < READ_CHUNK {
            // A huge reply or message passed: give the memory back, and the
            // heap pages its handling freed (a replay's entries are many
            // small allocations that the allocator would otherwise keep).
            buf.shrink_to(READ_CHUNK);
            release_free_memory();
        }
        self.rbuf = buf;
        alive
    }

    /// The next complete value at the start of `buf`, if it has arrived.
    fn next_value<'a>(&mut self, buf: &'a [u8]) -> Result<Option<(Value<'a>, usize)>, String> {
        let Some(len) = self.scanner.scan(buf).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        match resp::parse(&buf[..len]) {
            Ok(Some((value, n))) if n == len => Ok(Some((value, n))),
            Ok(_) => Err("Redis protocol error: reply boundary mismatch".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Redis refused us or answered nonsense: log each distinct reason once
    /// (across attempts) and start over with backoff.
    fn refused(&mut self, reason: &str) {
        if self.last_error != reason {
            ngx_log_error!(
                NGX_LOG_ERR,
                cycle_log(),
                "sse: {} {}; retrying with backoff",
                self.address(),
                reason
            );
            self.last_error = reason.to_string();
        }
        self.failure_logged = true;
        self.drop_connection();
        self.schedule_reconnect();
    }

    /// The connection broke: a working one is lost; one that Redis never
    /// answered is a failed attempt.
    pub(super) fn lost(&mut self, reason: &str) {
        if self.state != State::Ready {
            return self.failed(reason);
        }
        if !self.failure_logged {
            ngx_log_error!(
                NGX_LOG_WARN,
                cycle_log(),
                "sse: lost connection to {} ({}); reconnecting, open streams stay open",
                self.address(),
                reason
            );
            self.failure_logged = true;
        }
        self.drop_connection();
        self.schedule_reconnect();
    }

    /// An attempt to connect failed.
    fn failed(&mut self, reason: &str) {
        if !self.failure_logged {
            ngx_log_error!(
                NGX_LOG_ERR,
                cycle_log(),
                "sse: cannot connect to {} ({}); retrying with backoff, open streams stay open",
                self.address(),
                reason
            );
            self.failure_logged = true;
        }
        self.drop_connection();
        self.schedule_reconnect();
    }

    fn drop_connection(&mut self) {
        self.protocol.dropped();
        if let Some(gauge) = self.up_gauge() {
            metrics::gauge_set(gauge, 0);
        }
        if !self.conn.is_null() {
            // SAFETY: the connection is ours and closed once (pointer cleared).
            unsafe { ngx_close_connection(self.conn) };
            self.conn = ptr::null_mut();
        }
        // SAFETY: the ping timer is ours.
        unsafe {
            if self.ping.timer_set() != 0 {
                ngx_del_timer(&mut self.ping);
            }
        }
        self.rbuf.clear();
        self.scanner.reset();
        self.wbuf.clear();
        self.wpos = 0;
        if self.state != State::Closed {
            self.state = State::Down;
        }
    }

    fn schedule_reconnect(&mut self) {
        if self.state == State::Closed {
            return;
        }
        // Several addresses (Sentinels): the next attempt tries the next.
        if !self.peers.is_empty() {
            self.peer = (self.peer + 1) % self.peers.len();
        }
        let delay = self.backoff.next_delay(ngx_random() as u64);
        sse_debug!(
            cycle_log(),
            "sse: next attempt to {} in {} ms",
            self.address(),
            delay
        );
        // SAFETY: the reconnect timer is ours; the connection outlives it.
        unsafe { ngx_add_timer(&mut self.reconnect, delay as ngx_msec_t) };
    }

    /// Worker shutdown: close the connection, stop all timers, for good.
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.drop_connection();
        // SAFETY: the reconnect timer is ours.
        unsafe {
            if self.reconnect.timer_set() != 0 {
                ngx_del_timer(&mut self.reconnect);
            }
        }
    }
}

/// Returns the allocator's free pages to the system (glibc keeps freed
/// memory in its arenas; after a burst that is hundreds of MB of RSS).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
