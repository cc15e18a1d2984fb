//! The Redis bridge: non-blocking Redis connections driven by nginx's own
//! event loop (no thread, no async runtime). Each worker has one
//! *subscriber* connection (SUBSCRIBE/PSUBSCRIBE, messages in) and, when
//! some location keeps history, one *commands* connection (history reads:
//! requests and replies matched in order).
//!
//! States: `Down` (waiting for the reconnect timer) → `Connecting` (TCP
//! handshake in progress) → `Ready` (AUTH and SUBSCRIBE sent, messages
//! flowing) → back to `Down` on any failure, with exponential backoff.
//! Each transition is logged once, never each attempt. After a reconnect
//! every channel of the registry is subscribed again; messages published
//! while the connection was down are not delivered (pub/sub is at most once).

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
use sse_core::registry;
use sse_core::resp::{self, PubSubReply, Value};

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
/// Channels per SUBSCRIBE command when resubscribing many at once.
const SUBSCRIBE_BATCH: usize = 512;

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
    /// Commands: the function library to load on connect.
    function: Option<&'static str>,
    sockaddr: *mut ngx::ffi::sockaddr,
    socklen: ngx::ffi::socklen_t,
    name: ngx_str_t,
    /// The AUTH command, ready to send, if the URL has credentials.
    auth: Option<Vec<u8>>,
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
            let mut cmd = Vec::new();
            match &target.url.username {
                Some(user) => {
                    resp::encode_command(&mut cmd, &[b"AUTH", user.as_bytes(), password.as_bytes()])
                }
                None => resp::encode_command(&mut cmd, &[b"AUTH", password.as_bytes()]),
            }
            cmd
        });
        // SAFETY: the cycle log is valid for the worker's life; ngx_event_t
        // is a C struct for which all-zero is the initial state.
        let mut bridge = unsafe {
            Box::new(RedisBridge {
                role,
                state: State::Down,
                lost_requests: Vec::new(),
                pending: VecDeque::new(),
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

    pub fn handle(&mut self, event: RedisEvent, ev: *mut ngx_event_t, subs: &mut dyn Sink) {
        match (event, self.state) {
            (_, State::Closed) => {}
            (RedisEvent::Start | RedisEvent::Reconnect, State::Down) => self.connect(subs),
            (RedisEvent::Writable, State::Connecting) => self.finish_connect(ev, subs),
            (RedisEvent::Writable, State::Ready) => self.write_out(),
            (RedisEvent::Readable, State::Ready) => self.read(ev, subs),
            (RedisEvent::Ping, State::Ready) => self.ping(),
            _ => {}
        }
        if !self.lost_requests.is_empty() {
            subs.commands_lost(std::mem::take(&mut self.lost_requests));
        }
    }

    /// Subscriber: sends `PING <token>`; [`Sink::barrier`] is called with
    /// the token once Redis has processed every command sent before it.
    pub fn barrier(&mut self, token: u64) -> bool {
        if self.state != State::Ready || self.role != Role::Subscriber {
            return false;
        }
        resp::encode_command(
            &mut self.wbuf,
            &[&b"PING"[..], token.to_string().as_bytes()],
        );
        self.write_out();
        true
    }

    fn connect(&mut self, subs: &mut dyn Sink) {
        // SAFETY: all-zero is the initial state of ngx_peer_connection_t; the
        // address and name live in the configuration pool for the cycle.
        unsafe {
            let mut pc: ngx_peer_connection_t = std::mem::zeroed();
            pc.sockaddr = self.sockaddr;
            pc.socklen = self.socklen;
            pc.name = &mut self.name;
            pc.get = Some(ngx_event_get_peer);
            pc.log = &mut self.quiet_log;
            pc.set_log_error(ngx::ffi::ngx_connection_log_error_e_NGX_ERROR_INFO);
            pc.tries = 1;
            let rc = ngx_event_connect_peer(&mut pc);
            if rc != NGX_OK as ngx_int_t && rc != NGX_AGAIN as ngx_int_t {
                let err = std::io::Error::last_os_error();
                self.conn = pc.connection;
                self.failed(&format!("connect() failed: {err}"));
                return;
            }
            let c = pc.connection;
            let log = cycle_log();
            (*c).log = log;
            (*(*c).read).log = log;
            (*(*c).write).log = log;
            (*(*c).read).handler = Some(read_handler);
            (*(*c).write).handler = Some(write_handler);
            (*c).data = self.role.tag();
            self.conn = c;
            if rc == NGX_AGAIN as ngx_int_t {
                self.state = State::Connecting;
                ngx_add_timer((*c).write, CONNECT_TIMEOUT_MS);
                return;
            }
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
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let rc = libc::getsockopt(
                (*self.conn).fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut libc::c_int as *mut c_void,
                &mut len,
            );
            if rc == -1 || err != 0 {
                let err = if rc == -1 {
                    std::io::Error::last_os_error()
                } else {
                    std::io::Error::from_raw_os_error(err)
                };
                self.failed(&format!("connect() failed: {err}"));
                return;
            }
        }
        self.connected(subs);
    }

    /// TCP is up: authenticate, subscribe everything the registry holds.
    fn connected(&mut self, subs: &mut dyn Sink) {
        self.state = State::Ready;
        self.backoff.reset();
        self.awaiting_pong = false;
        self.last_error.clear();
        let keys = if self.role == Role::Subscriber {
            subs.keys()
        } else {
            Vec::new()
        };
        let log = cycle_log();
        if !self.ever_connected {
            ngx_log_error!(NGX_LOG_NOTICE, log, "sse: connected to {}", self.address());
        } else {
            ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "sse: reconnected to {}, resubscribing {} channel(s) and pattern(s)",
                self.address(),
                keys.len()
            );
        }
        self.ever_connected = true;
        self.failure_logged = false;
        self.wbuf.clear();
        self.wpos = 0;
        self.pending.clear();
        if let Some(auth) = &self.auth {
            self.wbuf.extend_from_slice(auth);
            self.pending.push_back(Pending::Internal);
        }
        // SAFETY: the ping timer is ours; the bridge outlives it.
        unsafe { ngx_add_timer(&mut self.ping, PING_INTERVAL_MS) };
        match self.role {
            Role::Subscriber => {
                // The control channel first: revocations must work even
                // before (and without) any client.
                resp::encode_command(&mut self.wbuf, &[b"SUBSCRIBE", CONTROL_CHANNEL.as_bytes()]);
                let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                for batch in keys.chunks(SUBSCRIBE_BATCH) {
                    encode_subscriptions(&mut self.wbuf, Direction::Subscribe, batch);
                }
                self.write_out();
                if self.state == State::Ready {
                    subs.resubscribed();
                }
            }
            Role::Commands => {
                if let Some(code) = self.function {
                    resp::encode_command(
                        &mut self.wbuf,
                        &[&b"FUNCTION"[..], b"LOAD", b"REPLACE", code.as_bytes()],
                    );
                    self.pending.push_back(Pending::FunctionLoad);
                }
                self.write_out();
                if self.state == State::Ready {
                    subs.commands_ready();
                }
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

    /// Commands: writes the requests queued with [`RedisBridge::request`].
    pub fn send(&mut self) {
        if self.state == State::Ready {
            self.write_out();
        }
    }

    pub fn subscribe(&mut self, keys: &[&[u8]]) {
        self.command(Direction::Subscribe, keys);
    }

    pub fn unsubscribe(&mut self, keys: &[&[u8]]) {
        self.command(Direction::Unsubscribe, keys);
    }

    fn command(&mut self, direction: Direction, keys: &[&[u8]]) {
        // Not connected: the full resubscription on connect covers it.
        if self.state != State::Ready {
            return;
        }
        encode_subscriptions(&mut self.wbuf, direction, keys);
        self.write_out();
    }

    fn ping(&mut self) {
        if self.awaiting_pong {
            self.lost("no answer to PING");
            return;
        }
        self.awaiting_pong = true;
        resp::encode_command(&mut self.wbuf, &[b"PING"]);
        if self.role == Role::Commands {
            self.pending.push_back(Pending::Internal);
        }
        // SAFETY: the ping timer is ours.
        unsafe { ngx_add_timer(&mut self.ping, PING_INTERVAL_MS) };
        self.write_out();
    }

    fn write_out(&mut self) {
        let c = self.conn;
        // SAFETY: Ready implies a live connection; `send` writes at most the
        // given length from our buffer.
        unsafe {
            while self.wpos < self.wbuf.len() {
                let Some(send) = (*c).send else {
                    return self.lost("connection cannot send");
                };
                let rest = &self.wbuf[self.wpos..];
                let n = send(c, rest.as_ptr() as *mut u8, rest.len());
                if n > 0 {
                    self.wpos += n as usize;
                } else if n == NGX_AGAIN as isize {
                    if ngx_handle_write_event((*c).write, 0) != NGX_OK as ngx_int_t {
                        self.lost("cannot wait for write");
                    }
                    return;
                } else {
                    return self.lost("send() failed");
                }
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
    }

    fn read(&mut self, ev: *mut ngx_event_t, subs: &mut dyn Sink) {
        let c = self.conn;
        let mut budget = READ_BUDGET;
        // SAFETY: Ready implies a live connection; `recv` writes at most the
        // spare capacity we pass, which we then mark initialised.
        unsafe {
            loop {
                if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                    self.rbuf.reserve(READ_CHUNK);
                }
                let spare = self.rbuf.capacity() - self.rbuf.len();
                let Some(recv) = (*c).recv else {
                    return self.lost("connection cannot receive");
                };
                let n = recv(c, self.rbuf.as_mut_ptr().add(self.rbuf.len()), spare);
                if n == NGX_AGAIN as isize {
                    break;
                }
                if n == 0 {
                    return self.lost("closed by redis");
                }
                if n < 0 {
                    return self.lost("recv() failed");
                }
                self.rbuf.set_len(self.rbuf.len() + n as usize);
                self.awaiting_pong = false;
                if !self.dispatch(subs) {
                    return;
                }
                budget = budget.saturating_sub(n as usize);
                if budget == 0 && (*ev).ready() != 0 {
                    // Let client writes and timers run; continue next turn.
                    ngx_post_event(ev, &raw mut ngx_posted_events);
                    return;
                }
            }
            if ngx_handle_read_event(ev, 0) != NGX_OK as ngx_int_t {
                self.lost("cannot wait for read");
            }
        }
    }

    /// Handles every complete reply in the read buffer. Returns false if the
    /// connection was dropped.
    fn dispatch(&mut self, subs: &mut dyn Sink) -> bool {
        let mut used = 0;
        let mut fatal: Option<Vec<u8>> = None;
        loop {
            let value = match resp::parse(&self.rbuf[used..]) {
                Ok(Some((value, n))) => {
                    used += n;
                    value
                }
                Ok(None) => break,
                Err(e) => {
                    let reason = e.to_string();
                    self.lost(&reason);
                    return false;
                }
            };
            if self.role == Role::Commands {
                // Replies come in the order of the requests.
                match (self.pending.pop_front(), &value) {
                    (Some(Pending::Request(request)), _) => subs.reply(request, &value),
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
                    (Some(Pending::Internal), Value::Error(msg)) => {
                        fatal = Some(msg.to_vec());
                        break;
                    }
                    (Some(_), _) => {}
                    (None, _) => {
                        fatal = Some(b"a reply to no request".to_vec());
                        break;
                    }
                }
                continue;
            }
            match resp::pubsub_reply(&value) {
                Ok(PubSubReply::Message {
                    subscription,
                    channel,
                    payload,
                }) => subs.message(subscription, channel, payload),
                Ok(PubSubReply::Pong(token)) => {
                    if let Some(token) = sse_core::envelope::parse_id(token) {
                        subs.barrier(token);
                    }
                }
                Ok(PubSubReply::Error(msg)) => {
                    let msg = msg.to_vec();
                    self.error_reply(&msg);
                    return false;
                }
                Ok(_) => {}
                Err(e) => {
                    ngx_log_error!(
                        NGX_LOG_WARN,
                        cycle_log(),
                        "sse: {}: skipped: {}",
                        self.address(),
                        e
                    );
                }
            }
        }
        if let Some(msg) = fatal {
            self.error_reply(&msg);
            return false;
        }
        self.rbuf.drain(..used);
        if self.rbuf.is_empty() && self.rbuf.capacity() > 4 * READ_CHUNK {
            // A huge message passed: give the memory back.
            self.rbuf = Vec::with_capacity(READ_CHUNK);
        }
        true
    }

    /// Redis refused a command (wrong password, ...): log each distinct
    /// answer once and start over with backoff.
    fn error_reply(&mut self, msg: &[u8]) {
        if self.last_error != msg {
            ngx_log_error!(
                NGX_LOG_ERR,
                cycle_log(),
                "sse: {} answered \"{}\"; reconnecting",
                self.address(),
                String::from_utf8_lossy(msg)
            );
            self.last_error = msg.to_vec();
        }
        self.failure_logged = true;
        self.drop_connection();
        self.schedule_reconnect();
    }

    /// A working connection broke.
    fn lost(&mut self, reason: &str) {
        if self.state == State::Ready && !self.failure_logged {
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

#[derive(Clone, Copy)]
enum Direction {
    Subscribe,
    Unsubscribe,
}

/// (P)SUBSCRIBE / (P)UNSUBSCRIBE commands for registry keys: keys with `*`
/// are pattern globs.
fn encode_subscriptions(out: &mut Vec<u8>, direction: Direction, keys: &[&[u8]]) {
    let (channels, patterns): (Vec<&[u8]>, Vec<&[u8]>) =
        keys.iter().partition(|k| !registry::is_pattern_key(k));
    let names: [&[u8]; 2] = match direction {
        Direction::Subscribe => [b"SUBSCRIBE", b"PSUBSCRIBE"],
        Direction::Unsubscribe => [b"UNSUBSCRIBE", b"PUNSUBSCRIBE"],
    };
    for (name, keys) in names.into_iter().zip([channels, patterns]) {
        if !keys.is_empty() {
            let mut args = Vec::with_capacity(keys.len() + 1);
            args.push(name);
            args.extend(keys);
            resp::encode_command(out, &args);
        }
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
