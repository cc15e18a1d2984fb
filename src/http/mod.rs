//! The content handler of `sse_channel` locations: admit the request, send
//! the event-stream header, hand the connection to a stream.
//!
//! Like nginx's own small handlers, it reads top to bottom: method, body,
//! admission ([`admission`]), shutdown check, history position, header
//! ([`response`]), then [`Stream::open`] and the worker's fan-out.

mod admission;
pub mod control;
pub mod exposition;
mod response;

use ngx::ffi::{
    ngx_http_arg, ngx_http_request_t, ngx_int_t, ngx_tcp_nodelay, NGX_DONE, NGX_ERROR,
    NGX_HTTP_NOT_ALLOWED, NGX_HTTP_SERVICE_UNAVAILABLE, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, Method, NgxHttpCoreModule, Request};
use sse_core::history::Resume;

use crate::metrics;
use crate::ngx_ext::{add_pool_header, add_static_header, random_bytes, static_str};
use crate::replay::Replay;
use crate::stream::{Opening, Stream};
use crate::{worker, SseModule};
use sse_core::lanes::Lanes;
use sse_core::metrics::Counter;
use sse_core::session::Token;

/// The query argument that carries the last event id on a first connection
/// (EventSource cannot set headers).
const LAST_EVENT_ID_ARG: &str = "last_event_id";

/// The content handler of every `sse_channel` location.
///
/// # Safety
/// nginx calls content handlers with a live main request on the worker
/// thread.
pub unsafe extern "C" fn content_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: see above.
    let request = unsafe { Request::from_ngx_http_request(r) };
    let r = response::raw(request);
    if request.method() != Method::GET {
        metrics::count(Counter::Refused405, 1);
        // SAFETY: `r` is live and its header is not sent.
        unsafe {
            add_static_header(r, "Allow", "GET");
            return response::send_error(
                r,
                NGX_HTTP_NOT_ALLOWED,
                "sse: only GET opens an event stream\n",
            );
        }
    }
    let rc = request.discard_request_body().0;
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    let Some(lcf) = SseModule::location_conf(request) else {
        return NGX_ERROR as ngx_int_t;
    };
    let admitted = match admission::admit(request, lcf) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            match refusal.status {
                400 => metrics::count(Counter::Refused400, 1),
                403 => metrics::count(Counter::Refused403, 1),
                _ => {}
            }
            // SAFETY: as above.
            return unsafe { response::send_error(r, refusal.status, &refusal.reason) };
        }
    };
    if !worker::accepting() {
        metrics::count(Counter::Refused503, 1);
        // SAFETY: as above.
        return unsafe {
            response::send_error(
                r,
                NGX_HTTP_SERVICE_UNAVAILABLE,
                "sse: server is shutting down\n",
            )
        };
    }

    // SAFETY: `r` is live.
    let raw_resume = unsafe { resume_position(request) };
    let resume = match &raw_resume {
        Some(raw) => sse_core::envelope::parse_id(raw).map_or(Resume::Malformed, Resume::After),
        None => Resume::Fresh,
    };
    let concrete = || {
        admitted
            .subscriptions
            .iter()
            .filter(|p| p.is_concrete())
            .map(|p| Box::<[u8]>::from(p.as_bytes()))
            .collect()
    };
    // A Redis Cluster keeps each channel's history on its own node: one
    // position per channel (lanes) instead of one for the stream.
    let cluster = SseModule::main_conf(request)
        .and_then(|m| m.redis.as_ref())
        .is_some_and(|r| r.url.cluster.is_some());
    let history = lcf.history == 1;
    let lanes = (history && cluster).then(|| {
        Lanes::new(
            concrete(),
            raw_resume.as_deref(),
            lcf.history_start as usize,
        )
    });
    let replay =
        (history && !cluster).then(|| Replay::new(resume, lcf.history_start as usize, concrete()));
    if let (Some(_), Resume::After(since)) = (&replay, resume) {
        // Where the replay starts, for clients that read headers.
        // SAFETY: `r` is live and its header is not sent.
        unsafe { add_pool_header(r, "Last-Event-ID", since.to_string().as_bytes()) };
    }
    let id = worker::next_stream_id();
    // The session token: 128 bits from the kernel's CSPRNG, and where the
    // stream lives (worker and stream id) so that a change can be routed.
    let session = if lcf.session == 1 {
        let (Some(secret), Some(node)) = (random_bytes::<16>(), worker::node()) else {
            // SAFETY: as above.
            return unsafe {
                response::send_error(
                    r,
                    NGX_HTTP_SERVICE_UNAVAILABLE,
                    "sse: no session available\n",
                )
            };
        };
        Some(Token {
            node,
            stream: id,
            secret,
        })
    } else {
        None
    };
    // Events are small writes that must leave at once: without TCP_NODELAY,
    // Nagle's algorithm holds one back until the previous one is
    // acknowledged, and delayed ACKs make that up to 40 ms.
    if NgxHttpCoreModule::location_conf(request).is_some_and(|clcf| clcf.tcp_nodelay != 0) {
        // SAFETY: the request's live connection.
        unsafe { ngx_tcp_nodelay(request.connection()) };
    }

    let token = session.map(|t| t.to_string());
    // SAFETY: `r` is live and its header is not sent.
    let rc =
        unsafe { response::send_stream_header(r, lcf.retry, token.as_deref(), &admitted.refused) };
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
        return rc;
    }
    let opening = Opening {
        subscriptions: admitted.subscriptions,
        user: admitted.user,
        grants: admitted.grants,
        replay,
        lanes,
        id,
        max_backlog: lcf.max_backlog,
        heartbeat_ms: lcf.heartbeat,
        // SAFETY: `r` is live.
        http2: unsafe { (*r).http_version } >= ngx::ffi::NGX_HTTP_VERSION_20 as usize,
        session: session.map(|t| t.secret),
        rules: lcf.rules(),
    };
    // SAFETY: `r` is the live main request and this handler returns NGX_DONE.
    let Some(stream) = (unsafe { Stream::open(r, opening) }) else {
        return NGX_ERROR as ngx_int_t;
    };
    worker::register(stream);
    NGX_DONE as ngx_int_t
}

/// `Last-Event-ID` from the header or, failing that, the query argument,
/// as the client sent it (trimmed).
///
/// # Safety
/// `request` must be live.
unsafe fn resume_position(request: &mut Request) -> Option<Vec<u8>> {
    let mut arg = static_str("");
    // SAFETY: the caller's contract; nginx only reads the name, and `arg`
    // points into the request's own buffers.
    let has_arg = unsafe {
        ngx_http_arg(
            response::raw(request),
            LAST_EVENT_ID_ARG.as_ptr() as *mut u8,
            LAST_EVENT_ID_ARG.len(),
            &mut arg,
        )
    } == NGX_OK as ngx_int_t;
    let header = request
        .headers_in_iterator()
        .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(b"last-event-id"))
        .map(|(_, value)| value.as_bytes());
    sse_core::history::last_event_id(header, has_arg.then(|| arg.as_bytes())).map(<[u8]>::to_vec)
}
