//! The Redis bridge: non-blocking Redis connections driven by nginx's own
//! event loop (no thread, no async runtime). Each worker has one
//! *subscriber* connection (SUBSCRIBE/PSUBSCRIBE, messages in) and, when
//! some location keeps history, one *commands* connection (history reads:
//! requests and replies matched in order).
//!
//! States: `Down` (waiting for the reconnect timer) → `Connecting` (TCP
//! handshake in progress) → `Handshake` (TCP is up; AUTH, the subscriptions
//! and a `PING` are sent, no answer yet) → `Ready` (that PING was answered:
//! Redis accepted us) → back to `Down` on any failure, with exponential
//! backoff. A connection counts as up only once Redis has answered, so a
//! server that accepts TCP and then refuses (wrong password, ACL, loading,
//! closing at once) is a failed attempt: the backoff keeps growing and the
//! failure is logged once, not once per attempt. After a reconnect every
//! channel of the registry is subscribed again; messages published while the
//! connection was down are not delivered (pub/sub is at most once).
//!
//! On the subscriber connection each (P)SUBSCRIBE names one key and every
//! reply is matched to its command (`sse_core::subscriber`), so a key that
//! Redis refuses (ACL) ends only the streams that asked for it.

use std::collections::VecDeque;
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
use sse_core::envelope::CONTROL_CHANNEL;
use sse_core::resp::{self, Value};
use sse_core::subscriber::{self, Ping, Reply, Session};

use crate::config::RedisTarget;
use crate::ngx_ext::cycle_log;
use crate::worker;

const CONNECT_TIMEOUT_MS: ngx_msec_t = 3_000;
const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 5_000;
/// A PING goes out at this interval; no byte back by the next one means the
/// connection is dead even though TCP has not noticed.
const PING_INTERVAL_MS: ngx_msec_t = 15_000;
/// Bytes read per event before yielding to the rest of the event loop.
const READ_BUDGET: usize = 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// What the bridge needs from the worker.
pub trait Sink {
    /// Subscriber: a message on `channel`, received through `subscription`
    /// (the channel itself, or the pattern glob it matched).
    fn message(&mut self, subscription: &[u8], channel: &[u8], payload: &[u8]);
    /// Subscriber: every subscription key to (re)subscribe after connecting.
    fn keys(&self) -> Vec<Vec<u8>>;
    /// Subscriber: (re)connected and (re)subscribed; messages published
    /// while it was down are missing.
    fn resubscribed(&mut self);
    /// Subscriber: Redis has processed everything sent before `PING token`.
    fn barrier(&mut self, token: u64);
    /// Subscriber: Redis refused to subscribe `key`; its streams must end.
    fn refused(&mut self, key: &[u8], reason: &[u8]);
    /// Commands: the connection is ready for requests.
    fn commands_ready(&mut self);
    /// Commands: the reply to a request.
    fn reply(&mut self, request: Request, value: &Value<'_>);
    /// Commands: the connection broke; these requests got no reply.
    fn commands_lost(&mut self, requests: Vec<Request>);
}

/// A request on the commands connection, as the worker tags it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub stream: u64,
    /// The stream's read generation: replies to an abandoned read are ignored.
    pub generation: u32,
    pub kind: RequestKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// The EXEC of a MULTI holding all the reads below: one atomic snapshot.
    Snapshot,
    /// GET of the global sequence.
    Seq,
    /// XRANGE / XREVRANGE of channel `i` of the stream's history.
    Range(usize),
    /// HGET of channel `i`'s last id.
    Last(usize),
}

/// What a reply on the commands connection answers.
#[derive(Clone, Copy, Debug)]
enum Pending {
    /// AUTH or PING: an error means the connection is unusable.
    Internal,
    /// The PING after the first commands: its answer makes the connection up.
    Ready,
    /// FUNCTION LOAD of redis/sse.lua: an error is logged, not fatal.
    FunctionLoad,
    Request(Request),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Subscriber = 1,
    Commands = 2,
}

impl Role {
    /// Roles travel in `c->data` and timer `ev->data` (no pointer needed:
    /// there is one bridge of each role per worker).
    fn tag(self) -> *mut c_void {
        self as usize as *mut c_void
    }

    fn from_tag(tag: *mut c_void) -> Option<Role> {
        match tag as usize {
            1 => Some(Role::Subscriber),
            2 => Some(Role::Commands),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Role::Subscriber => "redis",
            Role::Commands => "redis (history)",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum RedisEvent {
    Start,
    Readable,
    Writable,
    Reconnect,
    Ping,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Down,
    Connecting,
    /// TCP is up and the first commands are sent; Redis has not answered.
    Handshake,
    Ready,
    Closed,
}

pub struct RedisBridge {
    role: Role,
    state: State,
    /// Commands: requests whose connection broke, to hand back to the sink.
    pub(crate) lost_requests: Vec<Request>,
    /// Commands: what each reply in flight answers, oldest first.
    pending: VecDeque<Pending>,
    /// Subscriber: the commands in flight and what their replies mean.
    session: Session,
    /// Subscriber: keys subscribed when the connection came up, and how
    /// many of them Redis refused (for the log line once it is up).
    initial_keys: usize,
    refused_keys: usize,
    /// Commands: the function library to load on connect.
    function: Option<&'static str>,
    sockaddr: *mut ngx::ffi::sockaddr,
    socklen: ngx::ffi::socklen_t,
    name: ngx_str_t,
    /// The arguments of AUTH, if the URL has credentials.
    auth: Option<Vec<Vec<u8>>>,
    conn: *mut ngx_connection_t,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    reconnect: ngx_event_t,
    ping: ngx_event_t,
    /// Nothing received since the last PING.
    awaiting_pong: bool,
    backoff: Backoff,
    /// A failure was logged and no success since: do not log again.
    failure_logged: bool,
    ever_connected: bool,
    /// The last error reply logged, to log each distinct one once.
    last_error: Vec<u8>,
    /// A copy of the cycle log at CRIT level, given to nginx's connect code
    /// so that each failed attempt does not log a line of its own.
    quiet_log: ngx_log_t,
}

impl RedisBridge {
    pub fn new(
        target: &RedisTarget,
        role: Role,
        function: Option<&'static str>,
    ) -> Option<Box<Self>> {
        let auth = target.url.password.as_ref().map(|password| {
            let user = target.url.username.iter().map(|u| u.as_bytes().to_vec());
            user.chain([password.as_bytes().to_vec()]).collect()
        });
        // SAFETY: the cycle log is valid for the worker's life; ngx_event_t
        // is a C struct for which all-zero is the initial state.
        let mut bridge = unsafe {
            Box::new(RedisBridge {
                role,
                state: State::Down,
                lost_requests: Vec::new(),
                pending: VecDeque::new(),
                session: Session::default(),
                initial_keys: 0,
                refused_keys: 0,
                function,
                sockaddr: target.sockaddr,
                socklen: target.socklen,
                name: target.name,
                auth,
                conn: ptr::null_mut(),
                rbuf: Vec::with_capacity(READ_CHUNK),
                wbuf: Vec::new(),
                wpos: 0,
                reconnect: std::mem::zeroed(),
                ping: std::mem::zeroed(),
                awaiting_pong: false,
                backoff: Backoff::new(BACKOFF_MIN_MS, BACKOFF_MAX_MS),
                failure_logged: false,
                ever_connected: false,
                last_error: Vec::new(),
                quiet_log: *cycle_log(),
            })
        };
        bridge.quiet_log.log_level = NGX_LOG_CRIT as usize;
        let log = cycle_log();
        for (ev, handler) in [
            (
                &mut bridge.reconnect,
                reconnect_handler as unsafe extern "C" fn(*mut ngx_event_t),
            ),
            (&mut bridge.ping, ping_handler),
        ] {
            ev.handler = Some(handler);
            ev.log = log;
            ev.data = role.tag();
            // Our timers never keep an exiting worker alive.
            ev.set_cancelable(1);
        }
        Some(bridge)
    }

    fn address(&self) -> String {
        format!(
            "{} at {}",
            self.role.label(),
            String::from_utf8_lossy(self.name.as_bytes())
        )
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Whether the connection is live (TCP up): commands may be written.
    fn is_live(&self) -> bool {
        matches!(self.state, State::Handshake | State::Ready)
    }

    pub fn handle(&mut self, event: RedisEvent, ev: *mut ngx_event_t, subs: &mut dyn Sink) {
        match (event, self.state) {
            (_, State::Closed) => {}
            (RedisEvent::Start | RedisEvent::Reconnect, State::Down) => self.connect(subs),
            (RedisEvent::Writable, State::Connecting) => self.finish_connect(ev, subs),
            (RedisEvent::Writable, State::Handshake | State::Ready) => self.write_out(),
            (RedisEvent::Readable, State::Handshake | State::Ready) => self.read(ev, subs),
            (RedisEvent::Ping, State::Handshake | State::Ready) => self.ping(),
            _ => {}
        }
        if !self.lost_requests.is_empty() {
            subs.commands_lost(std::mem::take(&mut self.lost_requests));
        }
    }

    /// Subscriber: sends a barrier PING; [`Sink::barrier`] is called with
    /// `token` once Redis has processed every command sent before it.
    pub fn barrier(&mut self, token: u64) -> bool {
        if self.state != State::Ready || self.role != Role::Subscriber {
            return false;
        }
        self.session.ping(&mut self.wbuf, Ping::Barrier(token));
        self.write_out();
        true
    }

    fn connect(&mut self, subs: &mut dyn Sink) {
        // SAFETY: all-zero is the initial state of ngx_peer_connection_t; the
        // address and name live in the configuration pool for the cycle.
        let mut pc: ngx_peer_connection_t = unsafe { std::mem::zeroed() };
        pc.sockaddr = self.sockaddr;
        pc.socklen = self.socklen;
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
        // its two events, which this bridge now owns.
        unsafe {
            (*c).log = log;
            (*(*c).read).log = log;
            (*(*c).write).log = log;
            (*(*c).read).handler = Some(read_handler);
            (*(*c).write).handler = Some(write_handler);
            (*c).data = self.role.tag();
        }
        self.conn = c;
        if rc == NGX_AGAIN as ngx_int_t {
            self.state = State::Connecting;
            // SAFETY: the write event of the live connection above.
            unsafe { ngx_add_timer((*c).write, CONNECT_TIMEOUT_MS) };
            return;
        }
        self.connected(subs);
    }

    fn finish_connect(&mut self, ev: *mut ngx_event_t, subs: &mut dyn Sink) {
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
        self.connected(subs);
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

    /// TCP is up: authenticate, subscribe everything the registry holds (or
    /// load the function), then PING. The connection is up when the PING is
    /// answered ([`RedisBridge::established`]).
    fn connected(&mut self, subs: &mut dyn Sink) {
        self.state = State::Handshake;
        self.wbuf.clear();
        self.wpos = 0;
        self.pending.clear();
        self.session.reset();
        // The handshake PING below is outstanding: no answer by the next
        // PING tick means a server that took the connection and went silent.
        self.awaiting_pong = true;
        // SAFETY: the ping timer is ours; the bridge outlives it.
        unsafe { ngx_add_timer(&mut self.ping, PING_INTERVAL_MS) };
        let auth: Option<Vec<&[u8]>> = self
            .auth
            .as_ref()
            .map(|args| args.iter().map(Vec::as_slice).collect());
        match self.role {
            Role::Subscriber => {
                if let Some(args) = &auth {
                    self.session.auth(&mut self.wbuf, args);
                }
                let keys = subs.keys();
                self.initial_keys = keys.len();
                self.refused_keys = 0;
                // The control channel first: revocations must work even
                // before (and without) any client.
                let mut all: Vec<&[u8]> = vec![CONTROL_CHANNEL.as_bytes()];
                all.extend(keys.iter().map(Vec::as_slice));
                self.session.subscribe(&mut self.wbuf, &all);
                self.session.ping(&mut self.wbuf, Ping::Ready);
            }
            Role::Commands => {
                if let Some(args) = &auth {
                    let mut command: Vec<&[u8]> = vec![b"AUTH"];
                    command.extend_from_slice(args);
                    resp::encode_command(&mut self.wbuf, &command);
                    self.pending.push_back(Pending::Internal);
                }
                if let Some(code) = self.function {
                    resp::encode_command(
                        &mut self.wbuf,
                        &[&b"FUNCTION"[..], b"LOAD", b"REPLACE", code.as_bytes()],
                    );
                    self.pending.push_back(Pending::FunctionLoad);
                }
                resp::encode_command(&mut self.wbuf, &[b"PING"]);
                self.pending.push_back(Pending::Ready);
            }
        }
        self.write_out();
    }

    /// Redis answered the handshake: the connection is up.
    fn established(&mut self, subs: &mut dyn Sink) {
        self.state = State::Ready;
        self.backoff.reset();
        self.last_error.clear();
        self.failure_logged = false;
        let log = cycle_log();
        match self.role {
            Role::Subscriber => {
                let refused = match self.refused_keys {
                    0 => String::new(),
                    n => format!(", {n} refused"),
                };
                let verb = if self.ever_connected {
                    "reconnected to"
                } else {
                    "connected to"
                };
                ngx_log_error!(
                    NGX_LOG_NOTICE,
                    log,
                    "sse: {verb} {}, resubscribed {} channel(s) and pattern(s){refused}",
                    self.address(),
                    self.initial_keys
                );
                self.ever_connected = true;
                subs.resubscribed();
            }
            Role::Commands => {
                let verb = if self.ever_connected {
                    "reconnected to"
                } else {
                    "connected to"
                };
                ngx_log_error!(NGX_LOG_NOTICE, log, "sse: {verb} {}", self.address());
                self.ever_connected = true;
                subs.commands_ready();
            }
        }
    }

    /// Commands: sends `commands` as one MULTI/EXEC transaction, so that
    /// Redis runs them with nothing in between; the EXEC reply (an array of
    /// their replies) goes to [`Sink::reply`] as `request`.
    pub fn transaction(&mut self, request: Request, commands: &[Vec<Vec<u8>>]) -> bool {
        if self.state != State::Ready || self.role != Role::Commands {
            return false;
        }
        resp::encode_command(&mut self.wbuf, &[b"MULTI"]);
        self.pending.push_back(Pending::Internal);
        for args in commands {
            resp::encode_command(&mut self.wbuf, args);
            // "+QUEUED"
            self.pending.push_back(Pending::Internal);
        }
        resp::encode_command(&mut self.wbuf, &[b"EXEC"]);
        self.pending.push_back(Pending::Request(request));
        true
    }

    /// Commands: writes the transactions queued with
    /// [`RedisBridge::transaction`].
    pub fn send(&mut self) {
        if self.state == State::Ready {
            self.write_out();
        }
    }

    /// Subscriber: subscribes new keys. Before TCP is up there is nothing to
    /// do: the subscription on connect takes every key of the registry.
    pub fn subscribe(&mut self, keys: &[&[u8]]) {
        if self.is_live() && self.role == Role::Subscriber {
            self.session.subscribe(&mut self.wbuf, keys);
            self.write_out();
        }
    }

    pub fn unsubscribe(&mut self, keys: &[&[u8]]) {
        if self.is_live() && self.role == Role::Subscriber {
            self.session.unsubscribe(&mut self.wbuf, keys);
            self.write_out();
        }
    }

    fn ping(&mut self) {
        if self.awaiting_pong {
            self.lost("no answer to PING");
            return;
        }
        self.awaiting_pong = true;
        match self.role {
            Role::Subscriber => self.session.ping(&mut self.wbuf, Ping::Keepalive),
            Role::Commands => {
                resp::encode_command(&mut self.wbuf, &[b"PING"]);
                self.pending.push_back(Pending::Internal);
            }
        }
        // SAFETY: the ping timer is ours.
        unsafe { ngx_add_timer(&mut self.ping, PING_INTERVAL_MS) };
        self.write_out();
    }

    fn write_out(&mut self) {
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

    fn read(&mut self, ev: *mut ngx_event_t, subs: &mut dyn Sink) {
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
            if !self.dispatch(subs) {
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
    fn dispatch(&mut self, subs: &mut dyn Sink) -> bool {
        // Replies borrow from the buffer while the handlers below use the
        // bridge: take the buffer out meanwhile.
        let mut buf = std::mem::take(&mut self.rbuf);
        let mut used = 0;
        let alive = loop {
            let value = match resp::parse(&buf[used..]) {
                Ok(Some((value, n))) => {
                    used += n;
                    value
                }
                Ok(None) => break true,
                Err(e) => {
                    self.lost(&e.to_string());
                    break false;
                }
            };
            let outcome = match self.role {
                Role::Commands => self.on_command_reply(&value, subs),
                Role::Subscriber => self.on_pubsub_reply(&value, subs),
            };
            if let Err(reason) = outcome {
                self.error_reply(&reason);
                break false;
            }
        };
        if alive {
            buf.drain(..used);
        } else {
            buf.clear();
        }
        if buf.capacity() > 4 * READ_CHUNK && buf.len() < READ_CHUNK {
            // A huge reply or message passed: give the memory back, and the
            // heap pages its parsing freed (a replay's entries are many small
            // allocations that the allocator would otherwise keep).
            buf.shrink_to(READ_CHUNK);
            release_free_memory();
        }
        self.rbuf = buf;
        alive
    }

    /// Commands: replies come in the order of the requests.
    fn on_command_reply(&mut self, value: &Value<'_>, subs: &mut dyn Sink) -> Result<(), String> {
        match (self.pending.pop_front(), value) {
            (Some(Pending::Request(request)), _) => subs.reply(request, value),
            (Some(Pending::FunctionLoad), Value::Error(msg)) => {
                if self.last_error != *msg {
                    ngx_log_error!(
                        NGX_LOG_WARN,
                        cycle_log(),
                        "sse: {} refused to load the sse_publish function (\"{}\"); load redis/sse.lua yourself",
                        self.address(),
                        String::from_utf8_lossy(msg)
                    );
                    self.last_error = msg.to_vec();
                }
            }
            (Some(Pending::Internal | Pending::Ready), Value::Error(msg)) => {
                return Err(format!("answered \"{}\"", String::from_utf8_lossy(msg)));
            }
            (Some(Pending::Ready), _) => self.established(subs),
            (Some(_), _) => {}
            (None, _) => return Err("sent a reply to no request".into()),
        }
        Ok(())
    }

    fn on_pubsub_reply(&mut self, value: &Value<'_>, subs: &mut dyn Sink) -> Result<(), String> {
        match self.session.reply(value) {
            Ok(Reply::Message {
                subscription,
                channel,
                payload,
            }) => subs.message(subscription, channel, payload),
            Ok(Reply::Done) => {}
            Ok(Reply::Refused { key, reason }) => {
                if self.state == State::Handshake {
                    self.refused_keys += 1;
                }
                subs.refused(&key, reason);
            }
            Ok(Reply::Pong(Ping::Ready)) => self.established(subs),
            Ok(Reply::Pong(Ping::Barrier(token))) => subs.barrier(token),
            Ok(Reply::Pong(Ping::Keepalive)) => {}
            Err(fatal) => return Err(fatal_reason(&fatal)),
        }
        Ok(())
    }

    /// Redis refused us or answered nonsense: log each distinct reason once
    /// (across attempts) and start over with backoff.
    fn error_reply(&mut self, reason: &str) {
        if self.last_error != reason.as_bytes() {
            ngx_log_error!(
                NGX_LOG_ERR,
                cycle_log(),
                "sse: {} {}; retrying with backoff",
                self.address(),
                reason
            );
            self.last_error = reason.as_bytes().to_vec();
        }
        self.failure_logged = true;
        self.drop_connection();
        self.schedule_reconnect();
    }

    /// The connection broke: a working one is lost; one that Redis never
    /// answered is a failed attempt.
    fn lost(&mut self, reason: &str) {
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
        self.lost_requests
            .extend(self.pending.drain(..).filter_map(|p| match p {
                Pending::Request(r) => Some(r),
                _ => None,
            }));
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
        let delay = self.backoff.next_delay(ngx_random() as u64);
        // SAFETY: the reconnect timer is ours; the bridge outlives it.
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

/// The log text of a fatal reply on the subscriber connection.
fn fatal_reason(fatal: &subscriber::Fatal) -> String {
    match fatal {
        subscriber::Fatal::AuthRefused(_) => format!("refused us: {fatal}"),
        _ => format!("answered wrongly: {fatal}"),
    }
}

/// The role of a connection event's connection.
unsafe fn connection_role(ev: *mut ngx_event_t) -> Option<Role> {
    // SAFETY: connection events carry their connection in `data`, and our
    // connections carry their role tag.
    unsafe { Role::from_tag((*((*ev).data as *mut ngx_connection_t)).data) }
}

unsafe extern "C" fn read_handler(ev: *mut ngx_event_t) {
    // SAFETY: nginx passes the read event of one of our connections.
    if let Some(role) = unsafe { connection_role(ev) } {
        worker::on_redis_event(role, RedisEvent::Readable, ev);
    }
}

unsafe extern "C" fn write_handler(ev: *mut ngx_event_t) {
    // SAFETY: nginx passes the write event of one of our connections.
    if let Some(role) = unsafe { connection_role(ev) } {
        worker::on_redis_event(role, RedisEvent::Writable, ev);
    }
}

unsafe extern "C" fn reconnect_handler(ev: *mut ngx_event_t) {
    // SAFETY: our timers carry their role tag in `data`.
    if let Some(role) = Role::from_tag(unsafe { (*ev).data }) {
        worker::on_redis_event(role, RedisEvent::Reconnect, ev);
    }
}

unsafe extern "C" fn ping_handler(ev: *mut ngx_event_t) {
    // SAFETY: our timers carry their role tag in `data`.
    if let Some(role) = Role::from_tag(unsafe { (*ev).data }) {
        worker::on_redis_event(role, RedisEvent::Ping, ev);
    }
}
