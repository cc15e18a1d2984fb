//! nginx's callbacks into a stream: the takeover of HTTP/1.x streams, the
//! direct connection's read and write events, the request's write handler
//! and cleanup, and the heartbeat timer. Each finds its stream from the data
//! nginx hands back and does one thing with it.

use std::ffi::c_void;
use std::ptr::{self, NonNull};

use ngx::ffi::{
    ngx_add_timer, ngx_connection_t, ngx_current_msec, ngx_event_t, ngx_http_free_request,
    ngx_http_request_t, ngx_http_run_posted_requests, ngx_int_t, ngx_pfree, NGX_LOG_INFO, NGX_OK,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, NgxHttpCoreModule};
use ngx::ngx_log_error;

use sse_core::metrics::{CloseReason, Counter};

use super::{heartbeat_frame, State, Stream, StreamKey, Transport};
use crate::metrics;
use crate::transport::{Direct, Written};
use crate::SseModule;

pub type Handler = unsafe extern "C" fn(*mut ngx_event_t);

/// Stores the stream in the request's context slot, for the write handler.
///
/// # Safety
/// `r` must be live; the cleanup clears the slot before the stream goes.
pub unsafe fn attach(r: *mut ngx_http_request_t, key: StreamKey) {
    // SAFETY: the caller's contract.
    unsafe { *ctx_slot(r) = key.as_ptr() as *mut c_void };
}

/// The request's slot for this module's context: the stream, while it lives.
///
/// # Safety
/// `r` must be live.
unsafe fn ctx_slot(r: *mut ngx_http_request_t) -> *mut *mut c_void {
    // SAFETY: `r->ctx` has one slot per HTTP module, indexed by ctx_index.
    unsafe { (*r).ctx.add(SseModule::module().ctx_index) }
}

/// The stream of an event whose `data` is the stream (heartbeat, takeover).
///
/// # Safety
/// `ev` must be one of a live stream's own events.
unsafe fn stream_of_event(ev: *mut ngx_event_t) -> StreamKey {
    // SAFETY: the stream sets `data` to itself and deletes its events
    // before it is freed.
    unsafe { NonNull::new_unchecked((*ev).data as *mut Stream) }
}

/// The stream of a direct connection's event (`c->data` from the takeover).
///
/// # Safety
/// `ev` must be an event of a taken-over connection.
unsafe fn stream_of_connection(ev: *mut ngx_event_t) -> StreamKey {
    // SAFETY: the connection's `data` is its stream until it is closed.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        NonNull::new_unchecked((*c).data as *mut Stream)
    }
}

/// Retires the request of an HTTP/1.x stream and keeps the connection (see
/// `transport/direct.rs`). Runs from the posted-events queue, after the
/// content handler returned; streams that do not qualify stay requests.
pub unsafe extern "C" fn takeover_handler(ev: *mut ngx_event_t) {
    // SAFETY: the event is posted by a live stream and unposted when it
    // retires.
    let key = unsafe { stream_of_event(ev) };
    // SAFETY: as above.
    let s = unsafe { &mut *key.as_ptr() };
    let Transport::Request(writer) = &s.transport else {
        return;
    };
    let r = writer.r;
    // SAFETY: the stream's request is live until its cleanup runs.
    if s.state != State::Open || !writer.is_idle() || !unsafe { may_detach(r) } {
        return;
    }
    // SAFETY: the request qualifies (see may_detach): nothing of it is
    // needed once nginx has logged and freed it; the cleanup sees
    // `detaching` and leaves the stream alone.
    let (c, chunked, send_timeout) = unsafe {
        let c = (*r).connection;
        let chunked = (*r).chunked() != 0;
        let send_timeout =
            NgxHttpCoreModule::location_conf(&*r).map_or(0, |clcf| clcf.send_timeout);
        s.detaching = true;
        ngx_http_free_request(r, 0);
        s.detaching = false;
        (*c).set_destroyed(0);
        (c, chunked, send_timeout)
    };
    // SAFETY: `c` is the live client connection, now owned by the stream.
    unsafe {
        // The request-header buffer is no longer referenced by anything.
        let b = (*c).buffer;
        if !b.is_null() && ngx_pfree((*c).pool, (*b).start as *mut c_void) == NGX_OK as ngx_int_t {
            (*c).buffer = ptr::null_mut();
        }
        (*c).data = key.as_ptr() as *mut c_void;
        (*(*c).read).handler = Some(direct_read_handler);
        (*(*c).write).handler = Some(direct_write_handler);
        (*(*c).log).action = c"streaming events".as_ptr() as *mut _;
    }
    s.transport = Transport::Direct(Direct::new(c, chunked, send_timeout));
    sse_debug!(s.log(), "sse: stream {} taken over from its request", s.id);
    if !s.queue.is_empty() {
        // SAFETY: the stream is live.
        unsafe { Stream::flush(key) };
    }
}

/// Whether nothing of the request is needed any more: HTTP/1.x without TLS
/// or content encoding, nothing buffered by nginx, no subrequest.
///
/// # Safety
/// `r` must be live.
unsafe fn may_detach(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: the caller's contract; fields read on the worker thread.
    unsafe {
        let c = (*r).connection;
        (*c).ssl.is_null()
            && (*c).buffered() == 0
            && (*r).out.is_null()
            && (*r).postponed.is_null()
            && (*r).main == r
            && (*r).count() == 1
            && (*r).headers_out.content_encoding.is_null()
    }
}

unsafe extern "C" fn direct_read_handler(ev: *mut ngx_event_t) {
    // SAFETY: nginx passes an event of a taken-over connection.
    let key = unsafe { stream_of_connection(ev) };
    // SAFETY: as above: the stream is live while its connection is.
    let Transport::Direct(direct) = (unsafe { &mut (*key.as_ptr()).transport }) else {
        return;
    };
    // SAFETY: the live connection of a direct stream. nginx sets `close`
    // when it must close the connection (worker_shutdown_timeout).
    let (gone, ending) = (
        unsafe { (*direct.c).close() != 0 || direct.client_gone() },
        direct.ending,
    );
    if gone && ending {
        // Gone while its clean end was being written: nothing to finish.
        // SAFETY: a live, retired direct stream.
        unsafe { Stream::close_direct(key) };
    } else if gone {
        // SAFETY: a live stream.
        unsafe { Stream::finish(key, false) };
    }
}

unsafe extern "C" fn direct_write_handler(ev: *mut ngx_event_t) {
    // SAFETY: nginx passes an event of a taken-over connection.
    let key = unsafe { stream_of_connection(ev) };
    // SAFETY: as above.
    let s = unsafe { &mut *key.as_ptr() };
    let Transport::Direct(direct) = &mut s.transport else {
        return;
    };
    // SAFETY: `ev` is live.
    let timed_out = unsafe { (*ev).timedout() } != 0;
    if direct.ending {
        // A clean end in progress: write it out, or give up on timeout.
        // SAFETY: the live connection of a direct stream.
        let done = timed_out
            || !matches!(unsafe { direct.write() }, Written::Some(_))
            || direct.is_empty();
        if done {
            // SAFETY: a live, retired direct stream.
            unsafe { Stream::close_direct(key) };
        }
        return;
    }
    if timed_out {
        ngx_log_error!(
            NGX_LOG_INFO,
            s.log(),
            "sse: client timed out (send_timeout) with {} bytes pending",
            s.pending_bytes
        );
        s.end_reason = CloseReason::Slow;
        // SAFETY: a live stream.
        unsafe { Stream::finish(key, false) };
        return;
    }
    // SAFETY: a live stream.
    unsafe { Stream::flush(key) };
}

/// Called by nginx when the client's socket is writable again.
pub unsafe extern "C" fn request_write_handler(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this for the live request we installed it on; its
    // ctx slot holds the stream until the cleanup clears it.
    let key = NonNull::new(unsafe { *ctx_slot(r) } as *mut Stream);
    if let Some(key) = key {
        // SAFETY: as above.
        unsafe { Stream::flush(key) };
    }
}

pub unsafe extern "C" fn heartbeat_handler(ev: *mut ngx_event_t) {
    // SAFETY: the timer belongs to a live stream: it is deleted when the
    // stream retires.
    let key = unsafe { stream_of_event(ev) };
    // SAFETY: as above.
    let s = unsafe { &mut *key.as_ptr() };
    // SAFETY: nginx's clock, read on the worker thread.
    let idle_for = unsafe { ngx_current_msec }.wrapping_sub(s.last_write);
    let next = if idle_for < s.heartbeat_ms {
        // Events went out recently: no need for a comment yet.
        s.heartbeat_ms - idle_for
    } else {
        s.enqueue(heartbeat_frame());
        metrics::count(Counter::Heartbeats, 1);
        s.heartbeat_ms
    };
    // SAFETY: the stream's own timer.
    unsafe { ngx_add_timer(ev, next) };
    if idle_for < s.heartbeat_ms {
        return;
    }
    let c = s.request_connection();
    // SAFETY: a live stream; flushing frees at most this stream (and its
    // timer with it).
    unsafe { Stream::flush(key) };
    // A timer is not a request event: run what finalizing may have posted.
    if let Some(c) = c {
        // SAFETY: the connection outlives the posted requests it runs.
        unsafe { ngx_http_run_posted_requests(c) };
    }
}

/// The request's cleanup: the last word on a request-transport stream,
/// whatever ended it. (A direct stream has no request: it is freed with its
/// connection.)
pub unsafe extern "C" fn cleanup(data: *mut c_void) {
    // SAFETY: `data` is the stream leaked in `open`; nginx runs each
    // cleanup exactly once, while the request is still valid.
    unsafe {
        let key = NonNull::new_unchecked(data as *mut Stream);
        let s = &mut *key.as_ptr();
        if let Transport::Request(writer) = &s.transport {
            *ctx_slot(writer.r) = ptr::null_mut();
        }
        if s.detaching {
            // The takeover: the request goes, the stream stays.
            return;
        }
        Stream::drop_with_request(key);
    }
}
