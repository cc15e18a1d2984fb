//! One SSE connection once it is admitted: what it subscribed to, the
//! frames it owes its client, and the one way it ends.
//!
//! Life of a stream:
//! 1. [`Stream::open`] (called by the content handler) holds the request
//!    open, arms the heartbeat and posts the takeover (`events.rs`): an
//!    HTTP/1.x stream without TLS then sheds its request and writes to the
//!    connection itself ([`Transport::Direct`]); the others stay requests
//!    ([`Transport::Request`]).
//! 2. The worker hands it frames ([`Stream::deliver`]) and calls
//!    [`Stream::flush`] once per batch, so the events of one Redis read
//!    leave in one write.
//! 3. It ends when the client leaves, when its backlog overflows, at
//!    shutdown, revocation or a refused subscription ([`Stream::finish`]).
//!    Every ending goes through [`Stream::retire`], which leaves the fan-out
//!    (through the hook the worker installs, [`set_end_hook`]) exactly once.
//!
//! The stream module knows nothing of the worker: it is called by it, and
//! calls back only through that hook.

mod events;

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::ptr::NonNull;

use ngx::ffi::{
    ngx_add_timer, ngx_connection_t, ngx_current_msec, ngx_del_timer, ngx_delete_posted_event,
    ngx_event_t, ngx_handle_write_event, ngx_http_cleanup_add, ngx_http_finalize_request,
    ngx_http_request_t, ngx_http_run_posted_requests, ngx_http_send_special, ngx_http_test_reading,
    ngx_int_t, ngx_msec_t, ngx_post_event, ngx_posted_events, NGX_AGAIN, NGX_ERROR, NGX_HTTP_CLOSE,
    NGX_HTTP_LAST, NGX_HTTP_VERSION_20, NGX_LOG_WARN, NGX_OK,
};
use ngx::ngx_log_error;
use sse_core::channel::ListRules;
use sse_core::envelope::Envelope;
use sse_core::metrics::{CloseReason, Counter, Gauge};
use sse_core::pattern::{Grants, Pattern};
use sse_core::resp::Value;
use sse_core::session::Token;

use crate::frame::Frame;
use crate::metrics;
use crate::ngx_ext::NgxStrExt;
use crate::replay::{Live, Replay};
use crate::transport::{Direct, RequestWriter, Written};
use sse_core::lanes::Lanes;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Open,
    /// The backlog limit was hit; the stream is closed at the next flush.
    Overflowed,
    /// Retired: out of the fan-out; nginx is sending the end or closing.
    Finished,
}

/// How the stream's bytes reach the client.
pub enum Transport {
    /// Through nginx's output filters, as a request.
    Request(RequestWriter),
    /// The request is retired; the stream writes to the connection itself.
    Direct(Direct),
}

/// A stream, as the worker's fan-out and nginx's events refer to it.
pub type StreamKey = NonNull<Stream>;

/// What runs when a stream ends: given the stream's key, id and fan-out
/// keys (the stream itself is not to be touched from there).
pub type EndHook = fn(StreamKey, u64, &[Box<[u8]>]);

thread_local! {
    static END_HOOK: Cell<EndHook> = const { Cell::new(|_, _, _| {}) };
}

/// Installs what runs when a stream ends (the worker leaves its fan-out).
pub fn set_end_hook(hook: EndHook) {
    END_HOOK.with(|h| h.set(hook));
}

/// What a live change did to a stream's subscriptions.
pub struct Changed {
    /// Fan-out keys it no longer has.
    pub gone: Vec<Box<[u8]>>,
    /// Fan-out keys it has now and did not before.
    pub new: Vec<Box<[u8]>>,
    /// The subscriptions that are new.
    pub added: Vec<Pattern>,
}

/// What an admitted request subscribes to, and the limits of its location.
pub struct Opening {
    pub subscriptions: Vec<Pattern>,
    pub user: Option<Box<[u8]>>,
    /// `None`: an open location.
    pub grants: Option<Grants>,
    pub replay: Option<Replay>,
    /// Redis Cluster history: one lane per channel (instead of `replay`).
    pub lanes: Option<Lanes>,
    pub id: u64,
    pub max_backlog: usize,
    pub heartbeat_ms: ngx_msec_t,
    /// HTTP/2 (for the `transport` label of the open-streams gauge).
    pub http2: bool,
    /// `sse_session on`: the secret of the stream's session token.
    pub session: Option<[u8; 16]>,
    /// The location's channel rules, which live changes follow too.
    pub rules: ListRules,
}

pub struct Stream {
    transport: Transport,
    /// The client connection (for logs and the address).
    connection: *mut ngx_connection_t,
    /// The takeover, posted to run once the content handler has returned.
    takeover: ngx_event_t,
    /// Set while nginx frees the request at takeover: its cleanup must not
    /// free the stream.
    detaching: bool,
    /// What the client subscribed to (channels, or patterns where allowed).
    subscriptions: Vec<Pattern>,
    /// Their fan-out keys (see Pattern::subscription_key), in the same order.
    keys: Vec<Box<[u8]>>,
    /// `sse_user`, for per-message audiences and revocation.
    user: Option<Box<[u8]>>,
    /// `sse_allow` as evaluated when the stream opened (or by its last live
    /// change); `None`: open location.
    grants: Option<Grants>,
    /// The secret of its session token (`sse_session on`).
    session: Option<[u8; 16]>,
    /// Its location's channel rules (for live changes).
    rules: ListRules,
    state: State,
    /// Why it ends, for the metrics; `Client` unless something else ends it.
    end_reason: CloseReason,
    http2: bool,
    /// Frames not yet handed to the transport.
    queue: VecDeque<Frame>,
    /// Bytes the client owes: queued, and handed over but not yet sent.
    pending_bytes: usize,
    max_backlog: usize,
    heartbeat: ngx_event_t,
    heartbeat_ms: ngx_msec_t,
    /// When we last wrote to the client; heartbeats are only sent when idle.
    last_write: ngx_msec_t,
    /// Whether the stream is in the worker's list of streams to flush.
    pub dirty: bool,
    /// Unique in the worker: how replies from Redis find the stream.
    pub id: u64,
    /// `sse_history on`: replay, catch-up and de-duplication state.
    pub replay: Option<Replay>,
    /// `sse_history on` with Redis Cluster: the same, per channel.
    pub lanes: Option<Lanes>,
}

impl Stream {
    /// Holds the admitted request `r` open as a stream (its header is sent).
    /// Returns the stream; the request then belongs to it until it ends.
    ///
    /// # Safety
    /// `r` must be the live main request of the content handler, which
    /// returns NGX_DONE right after this succeeds.
    pub unsafe fn open(r: *mut ngx_http_request_t, opening: Opening) -> Option<StreamKey> {
        let keys = opening
            .subscriptions
            .iter()
            .map(Pattern::subscription_key)
            .collect();
        // SAFETY: all-zero is the initial state of nginx's event structs.
        let (takeover, heartbeat) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        let stream = Box::new(Stream {
            transport: Transport::Request(RequestWriter::new(r)),
            // SAFETY: `r` is live (caller's contract).
            connection: unsafe { (*r).connection },
            takeover,
            detaching: false,
            subscriptions: opening.subscriptions,
            keys,
            user: opening.user,
            grants: opening.grants,
            session: opening.session,
            rules: opening.rules,
            state: State::Open,
            end_reason: CloseReason::Client,
            http2: opening.http2,
            queue: VecDeque::new(),
            pending_bytes: 0,
            max_backlog: opening.max_backlog,
            heartbeat,
            heartbeat_ms: opening.heartbeat_ms,
            // SAFETY: nginx's clock, read on the worker thread.
            last_write: unsafe { ngx_current_msec },
            dirty: false,
            id: opening.id,
            replay: opening.replay,
            lanes: opening.lanes,
        });
        // SAFETY: `r` is live; the cleanup frees the stream with the request.
        let cln = unsafe { ngx_http_cleanup_add(r, 0) };
        if cln.is_null() {
            return None;
        }
        let key = NonNull::from(Box::leak(stream));
        // SAFETY: `cln` is a fresh cleanup of the live request `r`.
        unsafe {
            (*cln).handler = Some(events::cleanup);
            (*cln).data = key.as_ptr() as *mut c_void;
            events::attach(r, key);
        }
        // SAFETY: `r` is the live main request; the extra reference keeps it
        // open after the handler returns NGX_DONE, and nginx tells us of a
        // client close through ngx_http_test_reading.
        unsafe {
            let main = (*r).main;
            (*main).set_count((*main).count() + 1);
            (*r).read_event_handler = Some(ngx_http_test_reading);
            (*r).write_event_handler = Some(events::request_write_handler);
        }
        // SAFETY: the stream was just leaked and nothing else refers to it.
        let s = unsafe { &mut *key.as_ptr() };
        let log = s.log();
        for (ev, handler) in [
            (
                &mut s.heartbeat,
                events::heartbeat_handler as events::Handler,
            ),
            (&mut s.takeover, events::takeover_handler),
        ] {
            ev.handler = Some(handler);
            ev.data = key.as_ptr() as *mut c_void;
            ev.log = log;
        }
        if s.heartbeat_ms > 0 {
            // Heartbeats must not keep a gracefully exiting worker alive.
            s.heartbeat.set_cancelable(1);
            // SAFETY: the stream's own timer; deleted when it retires.
            unsafe { ngx_add_timer(&mut s.heartbeat, s.heartbeat_ms) };
        }
        // SAFETY: `r` is live.
        if unsafe { (*r).http_version } < NGX_HTTP_VERSION_20 as usize {
            // SAFETY: the stream's own event; unposted when it retires.
            unsafe { ngx_post_event(&mut s.takeover, &raw mut ngx_posted_events) };
        }
        metrics::count(Counter::StreamsOpened, 1);
        metrics::gauge_add(s.transport_gauge(), 1);
        metrics::gauge_add(Gauge::Subscriptions, s.keys.len() as i64);
        sse_debug!(
            log,
            "sse: stream {} open, {} subscription(s)",
            s.id,
            s.keys.len()
        );
        Some(key)
    }

    fn transport_gauge(&self) -> Gauge {
        if self.http2 {
            Gauge::StreamsHttp2
        } else {
            Gauge::StreamsHttp1
        }
    }

    fn log(&self) -> *mut ngx::ffi::ngx_log_t {
        // SAFETY: the client connection outlives its stream.
        unsafe { (*self.connection).log }
    }

    /// The fan-out keys of the stream's subscriptions.
    pub fn keys(&self) -> &[Box<[u8]>] {
        &self.keys
    }

    pub fn user(&self) -> Option<&[u8]> {
        self.user.as_deref()
    }

    /// What the client subscribed to, as it wrote it.
    pub fn subscriptions(&self) -> &[Pattern] {
        &self.subscriptions
    }

    pub fn grants(&self) -> Option<&Grants> {
        self.grants.as_ref()
    }

    pub fn rules(&self) -> ListRules {
        self.rules
    }

    /// Whether `token` is this stream's session (its secret compared in
    /// constant time); false for a stream without a session.
    pub fn has_session(&self, token: &Token) -> bool {
        self.session
            .as_ref()
            .is_some_and(|secret| token.secret_is(secret))
    }

    /// A live change: the stream's subscriptions become `subscriptions`
    /// (already checked) and its grants `grants`.
    pub fn change(&mut self, subscriptions: Vec<Pattern>, grants: Option<Grants>) -> Changed {
        let keys: Vec<Box<[u8]>> = subscriptions
            .iter()
            .map(Pattern::subscription_key)
            .collect();
        let gone = self
            .keys
            .iter()
            .filter(|k| !keys.contains(k))
            .cloned()
            .collect();
        let new = keys
            .iter()
            .filter(|k| !self.keys.contains(k))
            .cloned()
            .collect();
        let added = subscriptions
            .iter()
            .filter(|p| !self.subscriptions.contains(p))
            .cloned()
            .collect();
        metrics::gauge_add(
            Gauge::Subscriptions,
            keys.len() as i64 - self.keys.len() as i64,
        );
        self.subscriptions = subscriptions;
        self.keys = keys;
        self.grants = grants;
        Changed { gone, new, added }
    }

    /// The subscription (as the client wrote it) whose fan-out key is `key`.
    pub fn subscription_for_key(&self, key: &[u8]) -> Option<&[u8]> {
        let i = self.keys.iter().position(|k| **k == *key)?;
        Some(self.subscriptions[i].as_bytes())
    }

    /// The connection whose posted requests must run after this stream did
    /// something outside nginx's request events (request transport only).
    pub fn request_connection(&self) -> Option<*mut ngx_connection_t> {
        matches!(self.transport, Transport::Request(_)).then_some(self.connection)
    }

    /// Whether a message that Redis delivered through `key` (a channel, or
    /// a pattern's glob) may reach this stream: once per subscription of
    /// the stream whose own key delivered it and whose documented rule
    /// matches the channel. Redis' globs match more than our patterns (`*`
    /// also matches `:`), so the same message can arrive through several
    /// keys; only one of them is the stream's (its subscriptions never
    /// overlap). A pattern may reach channels beyond the grants, so those are
    /// checked per message; concrete channels were checked when the stream
    /// opened.
    pub fn admits(&self, key: &[u8], channel: &[u8], envelope: &Envelope<'_>) -> bool {
        let Some(i) = self.keys.iter().position(|k| **k == *key) else {
            return false;
        };
        let subscription = &self.subscriptions[i];
        let wanted = if subscription.is_concrete() {
            subscription.as_bytes() == channel
        } else {
            let granted = match &self.grants {
                Some(grants) => grants.allows(channel),
                None => true,
            };
            granted && subscription.matches(channel)
        };
        wanted && envelope.admits(self.user.as_deref())
    }

    /// Takes a live event: held while a replay is under way, dropped if
    /// its id was already sent, queued otherwise.
    pub fn deliver(&mut self, id: Option<u64>, frame: Frame) {
        let replaying = self.replay.as_ref().is_some_and(|r| !r.is_live());
        if replaying {
            if self.owe(frame.len()) {
                if let Some(replay) = self.replay.as_mut() {
                    replay.hold(id, frame);
                }
            }
            return;
        }
        if let Some(replay) = self.replay.as_mut() {
            match replay.accept_live(id) {
                Live::Duplicate => return,
                Live::Send => {}
                Live::AfterGap => {
                    let gap = replay.gap_everywhere(&mut Vec::new());
                    self.enqueue(gap);
                }
            }
        }
        self.enqueue(frame);
    }

    /// Takes a live event with an id on a Redis Cluster history stream:
    /// `body` is its `event:`/`data:` lines, the stream adds its own id.
    pub fn deliver_lane(&mut self, channel: &[u8], id: u64, body: Frame, scratch: &mut Vec<u8>) {
        let Some(lanes) = self.lanes.as_mut() else {
            return;
        };
        let Some(lane) = lanes.find(channel) else {
            // Through a pattern (no history, no lane): the event without
            // its id, which is not a position of this stream.
            if self.owe(body.len() + 1) {
                metrics::count(Counter::EventsSent, 1);
                self.queue.push_back(body);
                self.queue.push_back(Frame::Static(b"\n"));
            }
            return;
        };
        if !lanes.is_live(lane) {
            if self.owe(body.len()) {
                if let Some(lanes) = self.lanes.as_mut() {
                    lanes.live(lane, id, body, scratch);
                }
            }
            return;
        }
        // The event and its id line (and a gap notice) go whole, or the
        // stream is over its backlog and ends.
        let frames = lanes.live(lane, id, body, scratch);
        let len = frames.iter().map(Frame::len).sum();
        if !frames.is_empty() && self.owe(len) {
            metrics::count(Counter::EventsSent, 1);
            self.queue.extend(frames);
        }
    }

    /// A lane's history reads are in: queue its replay and held events.
    pub fn finish_lane(
        &mut self,
        lane: usize,
        value: &Value<'_>,
        scratch: &mut Vec<u8>,
        max_message: usize,
    ) -> Option<String> {
        let lanes = self.lanes.as_mut()?;
        let held = lanes.held_bytes(lane);
        let budget = self.max_backlog.saturating_sub(self.pending_bytes);
        self.pending_bytes = self.pending_bytes.saturating_sub(held);
        let done = lanes.complete(
            lane,
            value,
            self.user.as_deref(),
            scratch,
            budget,
            max_message,
        );
        metrics::count(Counter::EventsReplayed, done.replayed as u64);
        if let Some(resume) = done.resume {
            metrics::count(resume, 1);
        }
        if self.state == State::Open {
            metrics::count(Counter::EventsSent, done.events as u64);
            for frame in done.frames {
                self.pending_bytes += frame.len();
                self.queue.push_back(frame);
            }
        }
        done.problem
    }

    /// A live change on a Redis Cluster history stream: its lanes follow
    /// the new channel set. Returns the lanes to read (`None` without
    /// lanes); what removed lanes held is owed no more.
    pub fn change_lanes(&mut self, channels: Vec<Box<[u8]>>) -> Option<Vec<usize>> {
        let (fresh, dropped) = self.lanes.as_mut()?.change(channels);
        self.pending_bytes = self.pending_bytes.saturating_sub(dropped);
        Some(fresh)
    }

    /// Queues a frame; no I/O happens until [`Stream::flush`].
    pub fn enqueue(&mut self, frame: Frame) {
        if self.owe(frame.len()) {
            if matches!(frame, Frame::Shared(_)) {
                metrics::count(Counter::EventsSent, 1);
            }
            self.queue.push_back(frame);
        }
    }

    /// Counts `len` more bytes against `sse_max_backlog`. A client that
    /// would owe more is marked for closing; one that owes nothing always
    /// gets the frame, however large (it is not slow).
    fn owe(&mut self, len: usize) -> bool {
        if self.state != State::Open {
            return false;
        }
        self.pending_bytes += len;
        if self.pending_bytes > self.max_backlog && self.pending_bytes > len {
            self.state = State::Overflowed;
            sse_debug!(
                self.log(),
                "sse: stream {} over sse_max_backlog, dropping",
                self.id
            );
            return false;
        }
        true
    }

    /// The history reads are in (`value`, the transaction's reply): queue
    /// the replay and the held events. The replay keeps its newest events
    /// within `sse_max_backlog` (older ones are announced as a gap), so a
    /// client that resumes from far back cannot make the worker hold its
    /// whole history. Returns what was wrong with the reply, if anything.
    pub fn finish_replay(
        &mut self,
        value: &Value<'_>,
        scratch: &mut Vec<u8>,
        max_message: usize,
    ) -> Option<String> {
        let replay = self.replay.as_mut()?;
        let held: usize = replay.held_frames().map(Frame::len).sum();
        // What the client already owes (held events included) leaves that
        // much less room for the replay under sse_max_backlog.
        let budget = self.max_backlog.saturating_sub(self.pending_bytes);
        self.pending_bytes = self.pending_bytes.saturating_sub(held);
        let (frames, problem) =
            replay.complete(value, self.user.as_deref(), scratch, budget, max_message);
        sse_debug!(
            self.log(),
            "sse: stream {} replay done, {} frame(s)",
            self.id,
            frames.len()
        );
        if self.state == State::Open {
            metrics::count(Counter::EventsSent, frames.len() as u64);
            for frame in frames {
                self.pending_bytes += frame.len();
                self.queue.push_back(frame);
            }
        }
        problem
    }

    /// Writes the queued frames (one write) and releases the frames already
    /// sent. May end (and free) the stream.
    ///
    /// # Safety
    /// `this` must be a live stream.
    pub unsafe fn flush(this: StreamKey) {
        // SAFETY: the caller guarantees `this` is live.
        let s = unsafe { &mut *this.as_ptr() };
        match s.state {
            State::Finished => return,
            State::Overflowed => {
                s.log_overflow();
                s.end_reason = CloseReason::Slow;
                // SAFETY: live (caller's contract).
                unsafe { Stream::finish(this, false) };
                return;
            }
            State::Open => {}
        }
        if !s.queue.is_empty() {
            // SAFETY: nginx's clock, read on the worker thread.
            s.last_write = unsafe { ngx_current_msec };
        }
        // SAFETY: an open stream's transport is live.
        let broken = match unsafe { s.write_queue() } {
            Ok(()) => false,
            Err(()) => true,
        };
        if broken {
            s.end_reason = CloseReason::Error;
            // SAFETY: live (caller's contract).
            unsafe { Stream::finish(this, false) };
        }
    }

    /// Hands the queue to the transport. `Err`: the connection is broken.
    ///
    /// # Safety
    /// The transport's request or connection must be live.
    unsafe fn write_queue(&mut self) -> Result<(), ()> {
        match &mut self.transport {
            Transport::Direct(direct) => {
                let total: usize = self.queue.iter().map(Frame::len).sum();
                self.pending_bytes += direct.push(self.queue.drain(..), total);
                // SAFETY: live connection (caller's contract).
                match unsafe { direct.write() } {
                    Written::Some(n) => {
                        metrics::count(Counter::BytesSent, n as u64);
                        self.pending_bytes = self.pending_bytes.saturating_sub(n);
                        if !direct.is_empty() {
                            sse_debug!(
                                self.log(),
                                "sse: stream {} waits for the client, {} bytes pending",
                                self.id,
                                self.pending_bytes
                            );
                        }
                        Ok(())
                    }
                    Written::Error => Err(()),
                }
            }
            Transport::Request(writer) => {
                // SAFETY: live request (caller's contract).
                let (rc, sent) = unsafe { writer.write(self.queue.drain(..)) };
                metrics::count(Counter::BytesSent, sent as u64);
                self.pending_bytes = self.pending_bytes.saturating_sub(sent);
                if rc == NGX_ERROR as ngx_int_t {
                    return Err(());
                }
                if rc == NGX_AGAIN as ngx_int_t {
                    sse_debug!(self.log(), "sse: stream {} waits for the client", self.id);
                    // The socket is full: nginx keeps the rest and calls the
                    // request's write handler when it drains.
                    // SAFETY: the live request's connection.
                    let rc = unsafe { ngx_handle_write_event((*self.connection).write, 0) };
                    if rc != NGX_OK as ngx_int_t {
                        return Err(());
                    }
                }
                Ok(())
            }
        }
    }

    fn log_overflow(&self) {
        let c = self.connection;
        // SAFETY: the client connection outlives its stream.
        let addr = unsafe { (*c).addr_text.to_string_lossy() };
        ngx_log_error!(
            NGX_LOG_WARN,
            self.log(),
            "sse: closing stream of client {}{} with {} channel(s): {} bytes pending exceed sse_max_backlog {}",
            addr,
            self.user.as_deref().map_or(String::new(), |u| format!(" (user \"{}\")", String::from_utf8_lossy(u))),
            self.subscriptions.len(),
            self.pending_bytes,
            self.max_backlog
        );
    }

    /// Sends `event` as the stream's last event and ends it cleanly.
    ///
    /// # Safety
    /// `this` must be live; it may be freed when this returns.
    pub unsafe fn end_with(this: StreamKey, event: Frame, reason: CloseReason) {
        // SAFETY: the caller guarantees `this` is live.
        let s = unsafe { &mut *this.as_ptr() };
        s.end_reason = reason;
        if s.state == State::Open {
            s.pending_bytes += event.len();
            s.queue.push_back(event);
        }
        // SAFETY: as above.
        unsafe { Stream::end(this) };
    }

    /// Ends the stream cleanly and runs what finalizing posted (for callers
    /// outside nginx's request events: shutdown, revocation, refusals).
    ///
    /// # Safety
    /// `this` must be live; it may be freed when this returns.
    pub unsafe fn end(this: StreamKey) {
        // SAFETY: the caller guarantees `this` is live; finishing frees at
        // most this stream, and the connection outlives the posted requests.
        unsafe {
            let c = (*this.as_ptr()).request_connection();
            Stream::finish(this, true);
            if let Some(c) = c {
                ngx_http_run_posted_requests(c);
            }
        }
    }

    /// Ends the stream: retires it at once (no more events), then either
    /// completes the response body (`clean`: what is queued, then the end;
    /// the client sees a proper end and its EventSource reconnects) or
    /// closes the connection.
    ///
    /// # Safety
    /// `this` must be live; it may be freed when this returns.
    pub unsafe fn finish(this: StreamKey, clean: bool) {
        // SAFETY: the caller guarantees `this` is live.
        let s = unsafe { &mut *this.as_ptr() };
        if s.state == State::Finished {
            return;
        }
        // A clean end sends what is queued (a last event) first.
        let send_queue = clean && s.state == State::Open && !s.queue.is_empty();
        s.retire(this);
        match &mut s.transport {
            Transport::Request(writer) => {
                let r = writer.r;
                // SAFETY: a retired stream's request is still live until it
                // is finalized here; finalizing may run the cleanup, which
                // frees the stream, so nothing touches `s` afterwards.
                unsafe {
                    if send_queue {
                        writer.write(s.queue.drain(..));
                    }
                    let rc = if clean {
                        ngx_http_send_special(r, NGX_HTTP_LAST as usize)
                    } else {
                        NGX_HTTP_CLOSE as ngx_int_t
                    };
                    ngx_http_finalize_request(r, rc);
                }
            }
            Transport::Direct(direct) => {
                if send_queue {
                    let total: usize = s.queue.iter().map(Frame::len).sum();
                    direct.push(s.queue.drain(..), total);
                }
                let end_pending = clean && {
                    direct.push_end();
                    // SAFETY: the live connection of a direct stream.
                    matches!(unsafe { direct.write() }, Written::Some(_)) && !direct.is_empty()
                };
                // Otherwise the write handler closes once the end is out.
                if !end_pending {
                    // SAFETY: live, retired direct stream.
                    unsafe { Stream::close_direct(this) };
                }
            }
        }
    }

    /// Leaves the fan-out and stops the stream's own events, once: every
    /// way a stream ends (finish, close, nginx's cleanup) goes through here.
    fn retire(&mut self, this: StreamKey) {
        if self.state == State::Finished {
            return;
        }
        self.state = State::Finished;
        sse_debug!(self.log(), "sse: stream {} ends", self.id);
        metrics::count(self.end_reason.counter(), 1);
        metrics::gauge_add(self.transport_gauge(), -1);
        metrics::gauge_add(Gauge::Subscriptions, -(self.keys.len() as i64));
        END_HOOK.with(|hook| (hook.get())(this, self.id, &self.keys));
        // SAFETY: the stream's own timer and posted event, on the worker
        // thread; deleting an unset timer or unposted event is guarded.
        unsafe {
            if self.heartbeat.timer_set() != 0 {
                ngx_del_timer(&mut self.heartbeat);
            }
            if self.takeover.posted() != 0 {
                ngx_delete_posted_event(&mut self.takeover);
            }
        }
    }

    /// Closes a direct stream's connection and frees the stream.
    ///
    /// # Safety
    /// `this` must be a live direct stream; nothing refers to it afterwards
    /// (it is retired, and its connection is closed).
    unsafe fn close_direct(this: StreamKey) {
        // SAFETY: the caller's contract; the box was leaked in `open`, and
        // the stream is retired before the box takes it back.
        let mut s = unsafe {
            (*this.as_ptr()).retire(this);
            Box::from_raw(this.as_ptr())
        };
        if let Transport::Direct(direct) = &mut s.transport {
            // SAFETY: the live connection of a direct stream.
            unsafe { direct.close() };
        }
    }

    /// The request is gone (nginx's cleanup): free the stream.
    ///
    /// # Safety
    /// `this` must be live and refer to a request-transport stream whose
    /// request nginx is freeing.
    unsafe fn drop_with_request(this: StreamKey) {
        // SAFETY: the caller's contract; the box was leaked in `open`, and
        // the stream is retired before the box takes it back.
        unsafe {
            (*this.as_ptr()).retire(this);
            drop(Box::from_raw(this.as_ptr()));
        }
    }
}

/// The heartbeat comment, queued when the stream has been idle.
fn heartbeat_frame() -> Frame {
    Frame::Static(sse_core::frame::HEARTBEAT)
}

/// Ends every stream in `streams` cleanly (shutdown, revocation).
///
/// # Safety
/// Every stream must be live when listed; ending one frees at most that one.
pub unsafe fn end_all(streams: Vec<StreamKey>, reason: CloseReason) {
    for key in streams {
        // SAFETY: the caller's contract.
        unsafe {
            (*key.as_ptr()).end_reason = reason;
            Stream::end(key);
        }
    }
}
