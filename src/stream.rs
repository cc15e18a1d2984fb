//! One SSE connection: the content handler of `sse_channel` locations, and the
//! per-connection state that holds the stream open and writes events to it.
//!
//! Life of a stream:
//! 1. [`content_handler`] admits the request (channels, grants, user), sends
//!    the header and the `retry:` field, registers the stream in the
//!    worker's fan-out registry, bumps the request count and returns
//!    NGX_DONE to keep it open.
//! 2. An HTTP/1.x stream then sheds its request ([`Transport::Direct`], see
//!    `direct.rs`); HTTP/2 and TLS streams stay requests and write through
//!    nginx's output filters ([`Transport::Request`]).
//! 3. The worker hands it frames ([`Stream::deliver`], [`Stream::enqueue`])
//!    and calls [`Stream::flush`] once per batch, so the events of one Redis
//!    read leave in one write.
//! 4. It ends when the client leaves, when its backlog overflows, at
//!    shutdown or revocation ([`Stream::finish`]): it is unregistered at once
//!    and freed by the request cleanup, or with its connection (direct).
//!
//! Frames are reference-counted and shared by every subscriber of a message;
//! a stream keeps a frame alive until its bytes are sent. On the request
//! transport, buffers and chain links are recycled through the stream's free
//! list, so a long-lived stream does not grow its request pool.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::ptr::{self, NonNull};
use std::rc::Rc;

use ngx::ffi::{
    ngx_add_timer, ngx_buf_t, ngx_chain_get_free_buf, ngx_chain_t, ngx_chain_update_chains,
    ngx_connection_t, ngx_create_temp_buf, ngx_current_msec, ngx_del_timer,
    ngx_delete_posted_event, ngx_event_t, ngx_handle_write_event, ngx_http_arg,
    ngx_http_cleanup_add, ngx_http_complex_value_t, ngx_http_discard_request_body,
    ngx_http_finalize_request, ngx_http_free_request, ngx_http_output_filter, ngx_http_request_t,
    ngx_http_run_posted_requests, ngx_http_send_header, ngx_http_send_special,
    ngx_http_test_reading, ngx_int_t, ngx_msec_t, ngx_pfree, ngx_post_event, ngx_posted_events,
    ngx_str_t, ngx_tcp_nodelay, NGX_AGAIN, NGX_DONE, NGX_ERROR, NGX_HTTP_BAD_REQUEST,
    NGX_HTTP_CLOSE, NGX_HTTP_FORBIDDEN, NGX_HTTP_GET, NGX_HTTP_INTERNAL_SERVER_ERROR,
    NGX_HTTP_LAST, NGX_HTTP_NOT_ALLOWED, NGX_HTTP_OK, NGX_HTTP_SERVICE_UNAVAILABLE,
    NGX_HTTP_VERSION_20, NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_WARN, NGX_OK,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, NgxHttpCoreModule};
use ngx::ngx_log_error;
use sse_core::envelope::{self, Envelope};
use sse_core::frame;
use sse_core::history::Resume;
use sse_core::pattern::{Grants, Pattern};

use crate::config::{LocConf, REFUSED_DENY};
use crate::direct::{Direct, Written};
use crate::history::History;
use crate::ngx_ext::{
    add_pool_header, add_static_header, find_request_header, static_str, NgxStrExt,
};
use crate::{worker, SseModule};

/// Bytes of an event as sent on the wire, shared by all its recipients.
#[derive(Clone)]
pub enum Frame {
    Shared(Rc<[u8]>),
    Static(&'static [u8]),
}

impl Frame {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Frame::Shared(b) => b,
            Frame::Static(b) => b,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Open,
    /// The backlog limit was hit; the stream is closed at the next flush.
    Overflowed,
    /// Unregistered; nginx is sending the end of the body or closing.
    Finished,
}

/// The buffer tag that marks our buffers in the chains nginx hands back.
static BUF_TAG: u8 = 0;

fn buf_tag() -> *mut c_void {
    &BUF_TAG as *const u8 as *mut c_void
}

/// How the stream's bytes reach the client.
pub enum Transport {
    /// Through nginx's output filters, as a request: HTTP/2, TLS, or until
    /// the takeover (see `direct.rs`).
    Request(*mut ngx_http_request_t),
    /// The request is retired; the stream writes to the connection itself.
    Direct(Direct),
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
    /// Their registry keys (see Pattern::subscription_key).
    keys: Vec<Box<[u8]>>,
    /// `sse_user`, for per-message audiences and revocation.
    user: Option<Box<[u8]>>,
    /// `sse_allow` as evaluated when the stream opened; `None`: open location.
    grants: Option<Grants>,
    state: State,
    /// Frames not yet handed to nginx.
    queue: VecDeque<Frame>,
    /// Frames whose buffers nginx has not finished sending, oldest first.
    in_flight: VecDeque<Frame>,
    /// Bytes in `queue` and `in_flight` together: what the client owes us.
    pending_bytes: usize,
    max_backlog: usize,
    /// Recycled chain links and buffers (nginx's free/busy idiom).
    free: *mut ngx_chain_t,
    busy: *mut ngx_chain_t,
    heartbeat: ngx_event_t,
    heartbeat_ms: ngx_msec_t,
    /// When we last wrote to the client; heartbeats are only sent when idle.
    last_write: ngx_msec_t,
    /// Whether the stream is in the worker's list of streams to flush.
    pub(crate) dirty: bool,
    /// Unique in the worker: how replies from Redis find the stream.
    pub(crate) id: u64,
    /// `sse_history on`: replay, catch-up and de-duplication state.
    pub(crate) history: Option<History>,
}

pub type StreamKey = NonNull<Stream>;

/// The content handler of every `sse_channel` location.
pub unsafe extern "C" fn content_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live main request on the
    // worker thread.
    unsafe { open(r) }
}

unsafe fn open(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: `r` is live (see content_handler); its location configuration
    // is this module's LocConf because this handler is only installed by
    // `sse_channel`.
    unsafe {
        if (*r).method != NGX_HTTP_GET as usize {
            add_static_header(r, "Allow", "GET");
            return send_error(
                r,
                NGX_HTTP_NOT_ALLOWED as ngx_int_t,
                "sse: only GET opens an event stream\n",
            );
        }
        let rc = ngx_http_discard_request_body(r);
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }
        let Some(lcf) = SseModule::location_conf(&*r) else {
            return NGX_ERROR as ngx_int_t;
        };

        let admitted = match admit(r, lcf) {
            Ok(admitted) => admitted,
            Err((status, reason)) => return send_error(r, status as ngx_int_t, &reason),
        };
        if !worker::accepting() {
            return send_error(
                r,
                NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t,
                "sse: server is shutting down\n",
            );
        }

        let history = (lcf.history == 1).then(|| {
            let resume = resume_position(r);
            let channels = admitted
                .subscriptions
                .iter()
                .filter(|p| p.is_concrete())
                .map(|p| Box::<[u8]>::from(p.as_bytes()))
                .collect();
            History::new(resume, lcf.history_start as usize, channels)
        });
        if let Some(Resume::After(since)) = history.as_ref().map(History::resume) {
            // Where the replay starts, for clients that read headers.
            add_pool_header(r, "Last-Event-ID", since.to_string().as_bytes());
        }

        // Events are small writes that must leave at once: without
        // TCP_NODELAY, Nagle's algorithm holds one back until the previous
        // one is acknowledged, and delayed ACKs make that up to 40 ms.
        if NgxHttpCoreModule::location_conf(&*r).is_some_and(|clcf| clcf.tcp_nodelay != 0) {
            ngx_tcp_nodelay((*r).connection);
        }

        let rc = send_stream_header(r, lcf.retry, &admitted.refused);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
            return rc;
        }

        let keys = admitted
            .subscriptions
            .iter()
            .map(Pattern::subscription_key)
            .collect();
        let stream = Box::new(Stream {
            transport: Transport::Request(r),
            connection: (*r).connection,
            takeover: std::mem::zeroed(),
            detaching: false,
            subscriptions: admitted.subscriptions,
            keys,
            user: admitted.user,
            grants: admitted.grants,
            state: State::Open,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            pending_bytes: 0,
            max_backlog: lcf.max_backlog,
            free: ptr::null_mut(),
            busy: ptr::null_mut(),
            heartbeat: std::mem::zeroed(),
            heartbeat_ms: lcf.heartbeat,
            last_write: ngx_current_msec,
            dirty: false,
            id: worker::next_stream_id(),
            history,
        });
        let cln = ngx_http_cleanup_add(r, 0);
        if cln.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        let key = NonNull::from(Box::leak(stream));
        (*cln).handler = Some(cleanup);
        (*cln).data = key.as_ptr() as *mut c_void;
        *ctx_slot(r) = key.as_ptr() as *mut c_void;

        // Keep the request open after this handler returns NGX_DONE; nginx
        // tells us of a client close through ngx_http_test_reading.
        let main = (*r).main;
        (*main).set_count((*main).count() + 1);
        (*r).read_event_handler = Some(ngx_http_test_reading);
        (*r).write_event_handler = Some(write_handler);

        let s = &mut *key.as_ptr();
        if s.heartbeat_ms > 0 {
            s.heartbeat.handler = Some(heartbeat_handler);
            s.heartbeat.data = key.as_ptr() as *mut c_void;
            s.heartbeat.log = (*(*r).connection).log;
            // Heartbeats must not keep a gracefully exiting worker alive.
            s.heartbeat.set_cancelable(1);
            ngx_add_timer(&mut s.heartbeat, s.heartbeat_ms);
        }
        worker::register(key, &s.keys);
        if s.history.is_some() {
            worker::start_history(key);
        }
        if (*r).http_version < NGX_HTTP_VERSION_20 as usize {
            s.takeover.handler = Some(takeover_handler);
            s.takeover.data = key.as_ptr() as *mut c_void;
            s.takeover.log = (*(*r).connection).log;
            ngx_post_event(&mut s.takeover, &raw mut ngx_posted_events);
        }
        NGX_DONE as ngx_int_t
    }
}

/// The name of the query argument that carries the last event id on a
/// first connection (EventSource cannot set headers).
const LAST_EVENT_ID_ARG: &str = "last_event_id";

/// `Last-Event-ID` from the header or, failing that, the query argument.
unsafe fn resume_position(r: *mut ngx_http_request_t) -> Resume {
    // SAFETY: `r` is live.
    unsafe {
        let header = find_request_header(r, "last-event-id");
        let mut arg = static_str("");
        let has_arg = ngx_http_arg(
            r,
            LAST_EVENT_ID_ARG.as_ptr() as *mut u8,
            LAST_EVENT_ID_ARG.len(),
            &mut arg,
        ) == NGX_OK as ngx_int_t;
        Resume::from_request(
            header.map(|h| h.as_bytes()),
            has_arg.then(|| arg.as_bytes()),
        )
    }
}

/// What a request may subscribe to, once `sse_channel`, `sse_allow` and
/// `sse_user` are evaluated.
struct Admitted {
    subscriptions: Vec<Pattern>,
    user: Option<Box<[u8]>>,
    /// `None`: open location.
    grants: Option<Grants>,
    /// Requested but not granted, dropped (`sse_refused drop`).
    refused: Vec<Pattern>,
}

/// Decides what the request gets; the error is a status and the reason
/// shown to the client.
unsafe fn admit(r: *mut ngx_http_request_t, lcf: &LocConf) -> Result<Admitted, (u32, String)> {
    // SAFETY: `r` is live and the complex values were compiled for its
    // location.
    let (channels, user) = unsafe {
        (
            evaluate(r, &lcf.channels)?,
            lcf.user.map(|cv| evaluate(r, &[cv])).transpose()?,
        )
    };
    let values: Vec<&[u8]> = channels.iter().map(|v| v.as_bytes()).collect();
    let mut subscriptions = lcf
        .subscriptions_for(&values)
        .map_err(|e| (NGX_HTTP_BAD_REQUEST, format!("sse: {e}\n")))?;

    let user = match user.as_deref().map(|v| v[0].as_bytes()) {
        None | Some(b"") => None,
        Some(id) if envelope::valid_user(id) => Some(Box::from(id)),
        Some(id) => {
            // SAFETY: `r` is live.
            let log = unsafe { (*(*r).connection).log };
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "sse: sse_user evaluated to an invalid user id \"{}\"",
                String::from_utf8_lossy(id).escape_debug()
            );
            return Err((NGX_HTTP_FORBIDDEN, "sse: invalid user identity\n".into()));
        }
    };

    let Some(allow) = &lcf.allow else {
        return Ok(Admitted {
            subscriptions,
            user,
            grants: None,
            refused: Vec::new(),
        });
    };
    // SAFETY: as above.
    let grant_values = unsafe { evaluate(r, allow)? };
    let (grants, invalid) = Grants::parse(
        &grant_values
            .iter()
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>(),
    );
    if !invalid.is_empty() {
        // SAFETY: `r` is live.
        let log = unsafe { (*(*r).connection).log };
        ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "sse: ignoring invalid grant(s) from sse_allow: {}",
            invalid.join(", ").escape_debug()
        );
    }
    let (permitted, refused): (Vec<Pattern>, Vec<Pattern>) =
        subscriptions.drain(..).partition(|s| grants.permits(s));
    if !refused.is_empty() && (lcf.refused == REFUSED_DENY || permitted.is_empty()) {
        let names: Vec<&str> = refused.iter().map(Pattern::as_str).collect();
        return Err((
            NGX_HTTP_FORBIDDEN,
            format!("sse: not allowed: {}\n", names.join(", ")),
        ));
    }
    Ok(Admitted {
        subscriptions: permitted,
        user,
        grants: Some(grants),
        refused,
    })
}

/// Evaluates complex values (variables included) in the request.
unsafe fn evaluate(
    r: *mut ngx_http_request_t,
    values: &[*mut ngx_http_complex_value_t],
) -> Result<Vec<ngx_str_t>, (u32, String)> {
    let mut out = Vec::with_capacity(values.len());
    for &cv in values {
        let mut value = static_str("");
        // SAFETY: cv was compiled at configuration time for this location;
        // the result lives in the request pool.
        if unsafe { ngx::ffi::ngx_http_complex_value(r, cv, &mut value) } != NGX_OK as ngx_int_t {
            return Err((
                NGX_HTTP_INTERNAL_SERVER_ERROR,
                "sse: cannot evaluate configuration\n".into(),
            ));
        }
        out.push(value);
    }
    Ok(out)
}

/// The event that tells a client which requested channels were dropped
/// (`sse_refused drop`); data is the comma-separated list.
pub const REFUSED_EVENT: &[u8] = b"sse-refused";

/// Sends the SSE response header, the `retry:` field and, if channels were
/// dropped, the `sse-refused` event, flushed so the client sees the stream
/// open at once.
unsafe fn send_stream_header(
    r: *mut ngx_http_request_t,
    retry_ms: ngx_msec_t,
    refused: &[Pattern],
) -> ngx_int_t {
    // SAFETY: `r` is a live request whose header has not been sent.
    unsafe {
        let out = &mut (*r).headers_out;
        out.status = NGX_HTTP_OK as usize;
        out.content_type = static_str("text/event-stream");
        out.content_type_len = out.content_type.len;
        out.content_type_lowcase = ptr::null_mut();
        out.content_length_n = -1;
        if !add_static_header(r, "Cache-Control", "no-cache")
            || !add_static_header(r, "X-Accel-Buffering", "no")
        {
            return NGX_ERROR as ngx_int_t;
        }
        // A stream is never a conditional response: without this, nginx's
        // not-modified filter answers `If-None-Match: *` with a 304 (and
        // `If-Match` with a 412), and the stream would follow that
        // header-only response on the connection.
        (*r).set_disable_not_modified(1);
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
            return rc;
        }
        if (*r).header_only() != 0 || (*r).headers_out.status != NGX_HTTP_OK as usize {
            // Some filter turned the answer into a header-only one: the
            // stream must not follow it (it would read as the next response).
            return NGX_ERROR as ngx_int_t;
        }
        let mut first = Vec::with_capacity(24);
        frame::encode_retry(&mut first, retry_ms as u64);
        if !refused.is_empty() {
            let names: Vec<&str> = refused.iter().map(Pattern::as_str).collect();
            frame::encode_event(
                &mut first,
                Some(REFUSED_EVENT),
                None,
                names.join(",").as_bytes(),
            );
        }
        let Some(mut cl) = pool_chain(r, &first) else {
            return NGX_ERROR as ngx_int_t;
        };
        (*cl.buf).set_flush(1);
        ngx_http_output_filter(r, &mut cl)
    }
}

/// A one-off buffer copied into the request pool (headers, error bodies).
unsafe fn pool_chain(r: *mut ngx_http_request_t, bytes: &[u8]) -> Option<ngx_chain_t> {
    // SAFETY: `r` is live; the buffer is sized for `bytes`.
    unsafe {
        let b: *mut ngx_buf_t = ngx_create_temp_buf((*r).pool, bytes.len().max(1));
        if b.is_null() {
            return None;
        }
        ptr::copy_nonoverlapping(bytes.as_ptr(), (*b).last, bytes.len());
        (*b).last = (*b).last.add(bytes.len());
        Some(ngx_chain_t {
            buf: b,
            next: ptr::null_mut(),
        })
    }
}

/// Answers with `status` and a short text/plain reason.
unsafe fn send_error(r: *mut ngx_http_request_t, status: ngx_int_t, reason: &str) -> ngx_int_t {
    // SAFETY: `r` is a live request whose header has not been sent.
    unsafe {
        let rc = ngx_http_discard_request_body(r);
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }
        let out = &mut (*r).headers_out;
        out.status = status as usize;
        out.content_type = static_str("text/plain");
        out.content_type_len = out.content_type.len;
        out.content_type_lowcase = ptr::null_mut();
        out.content_length_n = reason.len() as i64;
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }
        let Some(mut cl) = pool_chain(r, reason.as_bytes()) else {
            return NGX_ERROR as ngx_int_t;
        };
        (*cl.buf).set_last_buf(1);
        (*cl.buf).set_last_in_chain(1);
        ngx_http_output_filter(r, &mut cl)
    }
}

impl Stream {
    /// Takes a live event: held while a replay is under way, dropped if
    /// its id was already sent, queued otherwise.
    pub fn deliver(&mut self, id: Option<u64>, frame: Frame) {
        if let Some(history) = &mut self.history {
            if !history.is_live() {
                if self.state == State::Open {
                    let len = frame.bytes().len();
                    self.pending_bytes += len;
                    if self.pending_bytes > self.max_backlog && self.pending_bytes > len {
                        self.state = State::Overflowed;
                        return;
                    }
                    history.hold(id, frame);
                }
                return;
            }
            if !history.accept_live(id) {
                return;
            }
        }
        self.enqueue(frame);
    }

    /// The history reads are in: queue the replay and the held events.
    /// The replay keeps its newest events within `sse_max_backlog` (older
    /// ones are announced as a gap), so a client that resumes from far back
    /// cannot make the worker hold its whole history.
    pub fn finish_replay(&mut self, scratch: &mut Vec<u8>, max_message: usize) {
        let Some(history) = &mut self.history else {
            return;
        };
        let held: usize = history.held_frames().map(|f| f.bytes().len()).sum();
        self.pending_bytes = self.pending_bytes.saturating_sub(held);
        let user = self.user.as_deref();
        let frames = history.complete(user, scratch, self.max_backlog, max_message);
        if self.state != State::Open {
            return;
        }
        for frame in frames {
            self.pending_bytes += frame.bytes().len();
            self.queue.push_back(frame);
        }
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

    pub fn user(&self) -> Option<&[u8]> {
        self.user.as_deref()
    }

    /// The subscription (as the client wrote it) whose Redis key is `key`.
    pub fn subscription_for_key(&self, key: &[u8]) -> Option<&[u8]> {
        let i = self.keys.iter().position(|k| **k == *key)?;
        Some(self.subscriptions[i].as_bytes())
    }

    /// Sends `event` as the stream's last event and ends it cleanly.
    ///
    /// # Safety
    /// `this` must be live; it may be freed when this returns.
    pub unsafe fn end_with(this: StreamKey, event: Frame) {
        // SAFETY: the caller guarantees `this` is live.
        unsafe {
            let s = &mut *this.as_ptr();
            if s.state == State::Open {
                s.pending_bytes += event.bytes().len();
                s.queue.push_back(event);
            }
            let c = s.request_connection();
            Stream::finish(this, true);
            if let Some(c) = c {
                ngx_http_run_posted_requests(c);
            }
        }
    }

    /// Queues a frame; no I/O happens until [`Stream::flush`]. A client that
    /// would owe more than `sse_max_backlog` is marked for closing; one that
    /// owes nothing always gets the frame, however large (it is not slow).
    pub fn enqueue(&mut self, frame: Frame) {
        if self.state != State::Open {
            return;
        }
        let len = frame.bytes().len();
        self.pending_bytes += len;
        if self.pending_bytes > self.max_backlog && self.pending_bytes > len {
            self.state = State::Overflowed;
            return;
        }
        self.queue.push_back(frame);
    }

    /// Writes the queued frames (one output call) and releases the frames
    /// already sent. May end (and free) the stream.
    ///
    /// # Safety
    /// `this` must be a registered, live stream.
    pub unsafe fn flush(this: StreamKey) {
        // SAFETY: the caller guarantees `this` is live; the request (or the
        // connection) outlives the stream.
        unsafe {
            let s = &mut *this.as_ptr();
            match s.state {
                State::Finished => return,
                State::Overflowed => {
                    let c = s.connection;
                    ngx_log_error!(
                        NGX_LOG_WARN,
                        (*c).log,
                        "sse: closing stream of client {}{} with {} channel(s): {} bytes pending exceed sse_max_backlog {}",
                        (*c).addr_text.to_string_lossy(),
                        s.user.as_deref().map_or(String::new(), |u| format!(" (user \"{}\")", String::from_utf8_lossy(u))),
                        s.subscriptions.len(),
                        s.pending_bytes,
                        s.max_backlog
                    );
                    Stream::finish(this, false);
                    return;
                }
                State::Open => {}
            }
            if !s.queue.is_empty() {
                s.last_write = ngx_current_msec;
            }
            match s.transport {
                Transport::Request(r) => Stream::flush_request(this, r),
                Transport::Direct(_) => Stream::flush_direct(this),
            }
        }
    }

    unsafe fn flush_direct(this: StreamKey) {
        // SAFETY: live stream with a live connection (caller's contract).
        unsafe {
            let s = &mut *this.as_ptr();
            let Transport::Direct(direct) = &mut s.transport else {
                return;
            };
            let total: usize = s.queue.iter().map(|f| f.bytes().len()).sum();
            s.pending_bytes += direct.push(s.queue.drain(..), total);
            match direct.write() {
                Written::Some(n) => s.pending_bytes = s.pending_bytes.saturating_sub(n),
                Written::Error => Stream::finish(this, false),
            }
        }
    }

    unsafe fn flush_request(this: StreamKey, r: *mut ngx_http_request_t) {
        // SAFETY: live stream and request (caller's contract).
        unsafe {
            let rc = (*this.as_ptr()).send_queue(r);
            if rc == NGX_ERROR as ngx_int_t {
                Stream::finish(this, false);
                return;
            }
            if rc == NGX_AGAIN as ngx_int_t {
                // The socket is full: nginx keeps the rest and wakes
                // write_handler when it drains.
                let c = (*r).connection;
                if ngx_handle_write_event((*c).write, 0) != NGX_OK as ngx_int_t {
                    Stream::finish(this, false);
                }
            }
        }
    }

    /// Hands the queued frames to nginx's output filters (request
    /// transport) and releases the frames already sent.
    unsafe fn send_queue(&mut self, r: *mut ngx_http_request_t) -> ngx_int_t {
        let mut out: *mut ngx_chain_t = ptr::null_mut();
        let mut last: *mut *mut ngx_chain_t = &mut out;
        let mut last_buf: *mut ngx_buf_t = ptr::null_mut();
        while let Some(frame) = self.queue.pop_front() {
            // SAFETY: `r` is live (caller's contract); its pool outlives
            // the chain links taken from it.
            let cl = unsafe { ngx_chain_get_free_buf((*r).pool, &mut self.free) };
            if cl.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            let bytes = frame.bytes();
            // SAFETY: `cl` is a valid link with a buffer; the buffer points
            // into `frame`, which `in_flight` keeps alive until nginx is done
            // with it (release_sent).
            unsafe {
                let b = (*cl).buf;
                // Recycled buffers keep old flags: start from a clean one.
                ptr::write_bytes(b, 0, 1);
                (*b).start = bytes.as_ptr() as *mut u8;
                (*b).pos = (*b).start;
                (*b).last = (*b).start.add(bytes.len());
                (*b).end = (*b).last;
                (*b).set_memory(1);
                (*b).tag = buf_tag();
                *last = cl;
                last = &mut (*cl).next;
                last_buf = b;
            }
            self.in_flight.push_back(frame);
        }
        if !last_buf.is_null() {
            // Bypass postpone_output: events must leave now.
            // SAFETY: the last buffer of the chain built above.
            unsafe { (*last_buf).set_flush(1) };
        }
        // SAFETY: `r` is live and `out` is a well-formed chain of our buffers.
        let rc = unsafe {
            let rc = ngx_http_output_filter(r, out);
            ngx_chain_update_chains(
                (*r).pool,
                &mut self.free,
                &mut self.busy,
                &mut out,
                buf_tag(),
            );
            rc
        };
        self.release_sent();
        rc
    }

    /// Drops the frames whose buffers nginx has sent. Buffers are sent in
    /// order, so the ones still busy are the newest `in_flight` entries.
    fn release_sent(&mut self) {
        let mut still_busy = 0;
        let mut cl = self.busy;
        // SAFETY: `busy` is a well-formed chain maintained by
        // ngx_chain_update_chains; it only holds our buffers.
        unsafe {
            while !cl.is_null() {
                if (*(*cl).buf).tag == buf_tag() {
                    still_busy += 1;
                }
                cl = (*cl).next;
            }
        }
        while self.in_flight.len() > still_busy {
            if let Some(frame) = self.in_flight.pop_front() {
                self.pending_bytes -= frame.bytes().len();
            }
        }
    }

    /// Ends the stream: unregisters it at once (no more events), then either
    /// completes the response body (`clean`: the client sees a proper end and
    /// its EventSource reconnects) or closes the connection.
    ///
    /// # Safety
    /// `this` must be live; it may be freed when this returns.
    pub unsafe fn finish(this: StreamKey, clean: bool) {
        // SAFETY: the caller guarantees `this` is live. Finalizing may run the
        // request cleanup, which frees the stream, so nothing touches `s`
        // after ngx_http_finalize_request.
        unsafe {
            let s = &mut *this.as_ptr();
            if s.state == State::Finished {
                return;
            }
            // A clean end sends what is queued (a last event) first.
            let send_queue = clean && s.state == State::Open && !s.queue.is_empty();
            s.state = State::Finished;
            worker::unregister(this, &s.keys);
            if s.heartbeat.timer_set() != 0 {
                ngx_del_timer(&mut s.heartbeat);
            }
            match &mut s.transport {
                Transport::Request(r) => {
                    let r = *r;
                    if send_queue {
                        (*this.as_ptr()).send_queue(r);
                    }
                    let rc = if clean {
                        ngx_http_send_special(r, NGX_HTTP_LAST as usize)
                    } else {
                        NGX_HTTP_CLOSE as ngx_int_t
                    };
                    ngx_http_finalize_request(r, rc);
                }
                Transport::Direct(direct) => {
                    if send_queue {
                        let total: usize = s.queue.iter().map(|f| f.bytes().len()).sum();
                        direct.push(s.queue.drain(..), total);
                    }
                    let end_pending = clean && {
                        direct.push_end();
                        matches!(direct.write(), Written::Some(_)) && !direct.is_empty()
                    };
                    // Otherwise the write handler closes once the end is out.
                    if !end_pending {
                        Stream::close_direct(this);
                    }
                }
            }
        }
    }

    /// Closes a direct stream's connection and frees the stream.
    unsafe fn close_direct(this: StreamKey) {
        // SAFETY: live direct stream (caller's contract); it is unregistered
        // (finished) and nothing refers to it once the connection is closed.
        unsafe {
            let mut s = Box::from_raw(this.as_ptr());
            if s.state != State::Finished {
                s.state = State::Finished;
                worker::unregister(this, &s.keys);
            }
            if s.heartbeat.timer_set() != 0 {
                ngx_del_timer(&mut s.heartbeat);
            }
            if let Transport::Direct(direct) = &mut s.transport {
                direct.close();
            }
        }
    }

    /// The connection whose posted requests must run after this stream did
    /// something outside nginx's request events (request transport only).
    pub fn request_connection(&self) -> Option<*mut ngx_connection_t> {
        matches!(self.transport, Transport::Request(_)).then_some(self.connection)
    }
}

/// Retires the request of an HTTP/1.x stream and keeps the connection (see
/// `direct.rs`). Runs from the posted-events queue, after the content
/// handler returned; streams that do not qualify stay requests.
unsafe extern "C" fn takeover_handler(ev: *mut ngx_event_t) {
    // SAFETY: the event is posted by a live stream and unposted by its
    // cleanup; nginx request fields are read on the worker thread.
    unsafe {
        let key = NonNull::new_unchecked((*ev).data as *mut Stream);
        let s = &mut *key.as_ptr();
        let Transport::Request(r) = s.transport else {
            return;
        };
        let c = (*r).connection;
        let qualifies = s.state == State::Open
            && (*c).ssl.is_null()
            && (*c).buffered() == 0
            && (*r).out.is_null()
            && (*r).postponed.is_null()
            && (*r).main == r
            && (*r).count() == 1
            && (*r).headers_out.content_encoding.is_null()
            && s.busy.is_null()
            && s.in_flight.is_empty();
        if !qualifies {
            return;
        }
        let chunked = (*r).chunked() != 0;
        let send_timeout =
            NgxHttpCoreModule::location_conf(&*r).map_or(0, |clcf| clcf.send_timeout);
        // nginx logs the request and frees it; the cleanup sees `detaching`.
        s.detaching = true;
        ngx_http_free_request(r, 0);
        s.detaching = false;
        (*c).set_destroyed(0);
        // The request-header buffer is no longer referenced by anything.
        let b = (*c).buffer;
        if !b.is_null() && ngx_pfree((*c).pool, (*b).start as *mut c_void) == NGX_OK as ngx_int_t {
            (*c).buffer = ptr::null_mut();
        }
        (*c).data = key.as_ptr() as *mut c_void;
        (*(*c).read).handler = Some(direct_read_handler);
        (*(*c).write).handler = Some(direct_write_handler);
        (*(*c).log).action = c"streaming events".as_ptr() as *mut _;
        s.free = ptr::null_mut();
        s.transport = Transport::Direct(Direct::new(c, chunked, send_timeout));
        if !s.queue.is_empty() {
            Stream::flush(key);
        }
    }
}

unsafe extern "C" fn direct_read_handler(ev: *mut ngx_event_t) {
    // SAFETY: the connection's `data` is its stream from the takeover on.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        let key = NonNull::new_unchecked((*c).data as *mut Stream);
        let Transport::Direct(direct) = &mut (*key.as_ptr()).transport else {
            return;
        };
        let (gone, ending) = (direct.client_gone(), direct.ending);
        if gone && ending {
            // Gone while its clean end was being written: nothing to finish.
            Stream::close_direct(key);
        } else if gone {
            Stream::finish(key, false);
        }
    }
}

unsafe extern "C" fn direct_write_handler(ev: *mut ngx_event_t) {
    // SAFETY: as direct_read_handler.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        let key = NonNull::new_unchecked((*c).data as *mut Stream);
        let s = &mut *key.as_ptr();
        let Transport::Direct(direct) = &mut s.transport else {
            return;
        };
        if direct.ending {
            // A clean end in progress: write it out, or give up on timeout.
            let done = (*ev).timedout() != 0
                || !matches!(direct.write(), Written::Some(_))
                || direct.is_empty();
            if done {
                Stream::close_direct(key);
            }
            return;
        }
        let timed_out = (*ev).timedout() != 0;
        if timed_out {
            ngx_log_error!(
                NGX_LOG_INFO,
                (*c).log,
                "sse: client timed out (send_timeout) with {} bytes pending",
                s.pending_bytes
            );
            Stream::finish(key, false);
            return;
        }
        Stream::flush(key);
    }
}

/// Called by nginx when the client's socket is writable again.
unsafe extern "C" fn write_handler(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this for the live request we installed it on; its
    // ctx slot holds the stream until the cleanup clears it.
    unsafe {
        if let Some(key) = stream_of(r) {
            Stream::flush(key);
        }
    }
}

/// The request's slot for this module's context: the stream, while it lives.
unsafe fn ctx_slot(r: *mut ngx_http_request_t) -> *mut *mut c_void {
    // SAFETY: `r->ctx` has one slot per HTTP module, indexed by ctx_index.
    unsafe { (*r).ctx.add(SseModule::module().ctx_index) }
}

unsafe fn stream_of(r: *mut ngx_http_request_t) -> Option<StreamKey> {
    // SAFETY: see ctx_slot.
    NonNull::new(unsafe { *ctx_slot(r) } as *mut Stream)
}

unsafe extern "C" fn heartbeat_handler(ev: *mut ngx_event_t) {
    // SAFETY: the timer belongs to a live stream: it is deleted before the
    // stream is freed.
    unsafe {
        let key = NonNull::new_unchecked((*ev).data as *mut Stream);
        let s = &mut *key.as_ptr();
        let idle_for = ngx_current_msec.wrapping_sub(s.last_write);
        if idle_for < s.heartbeat_ms {
            // Events went out recently: no need for a comment yet.
            ngx_add_timer(ev, s.heartbeat_ms - idle_for);
            return;
        }
        let c = s.request_connection();
        ngx_add_timer(ev, s.heartbeat_ms);
        s.enqueue(Frame::Static(frame::HEARTBEAT));
        Stream::flush(key);
        // A timer is not a request event: run what finalizing may have posted.
        if let Some(c) = c {
            ngx_http_run_posted_requests(c);
        }
    }
}

/// The request's cleanup: the last word on a stream, whatever ended it.
unsafe extern "C" fn cleanup(data: *mut c_void) {
    // SAFETY: `data` is the stream leaked in `open`, and nginx runs each
    // cleanup exactly once.
    unsafe {
        let key = NonNull::new_unchecked(data as *mut Stream);
        let s = &mut *key.as_ptr();
        if let Transport::Request(r) = s.transport {
            *ctx_slot(r) = ptr::null_mut();
        }
        if s.detaching {
            // The takeover: the request goes, the stream stays.
            return;
        }
        if s.takeover.posted() != 0 {
            ngx_delete_posted_event(&mut s.takeover);
        }
        if s.state != State::Finished {
            s.state = State::Finished;
            worker::unregister(key, &s.keys);
        }
        if s.heartbeat.timer_set() != 0 {
            ngx_del_timer(&mut s.heartbeat);
        }
        drop(Box::from_raw(key.as_ptr()));
    }
}
