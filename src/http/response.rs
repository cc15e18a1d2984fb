//! The two answers a stream location gives: the event-stream header with
//! its first bytes, or an error with a short text/plain reason.

use std::ptr;

use ngx::ffi::{
    ngx_buf_t, ngx_chain_t, ngx_create_temp_buf, ngx_http_request_t, ngx_int_t, ngx_msec_t,
    NGX_ERROR, NGX_HTTP_OK, NGX_OK,
};
use ngx::http::{HTTPStatus, Request};
use sse_core::frame;
use sse_core::pattern::Pattern;
use sse_core::session::SESSION_EVENT;

use crate::frame::REFUSED_EVENT;
use crate::ngx_ext::{add_static_header, static_str};

/// Sends the SSE response header, the `retry:` field, the session token
/// (`sse_session on`) and, if channels were dropped, the `sse-refused`
/// event, flushed so the client sees the stream open at once.
///
/// # Safety
/// `r` must be a live request whose header has not been sent.
pub unsafe fn send_stream_header(
    r: *mut ngx_http_request_t,
    retry_ms: ngx_msec_t,
    session: Option<&str>,
    refused: &[Pattern],
) -> ngx_int_t {
    // SAFETY: the caller's contract.
    let request = unsafe { Request::from_ngx_http_request(r) };
    // Raw access below goes through a pointer derived from `request`.
    let r = raw(request);
    request.set_status(HTTPStatus(NGX_HTTP_OK as usize));
    // SAFETY: the caller's contract; static strings outlive the request.
    unsafe {
        let out = &mut (*r).headers_out;
        out.content_type = static_str("text/event-stream");
        out.content_type_len = out.content_type.len;
        out.content_type_lowcase = ptr::null_mut();
        out.content_length_n = -1;
        // A stream is never a conditional response: without this, nginx's
        // not-modified filter answers `If-None-Match: *` with a 304 (and
        // `If-Match` with a 412), and the stream would follow that
        // header-only response on the connection.
        (*r).set_disable_not_modified(1);
    }
    // SAFETY: as above.
    let added = unsafe {
        add_static_header(r, "Cache-Control", "no-cache")
            && add_static_header(r, "X-Accel-Buffering", "no")
    };
    if !added {
        return NGX_ERROR as ngx_int_t;
    }
    let rc = request.send_header().0;
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
        return rc;
    }
    // SAFETY: the caller's contract.
    let status = unsafe { (*r).headers_out.status };
    if request.header_only() || status != NGX_HTTP_OK as usize {
        // Some filter turned the answer into a header-only one: the stream
        // must not follow it (it would read as the next response).
        return NGX_ERROR as ngx_int_t;
    }
    let mut first = Vec::with_capacity(24);
    frame::encode_retry(&mut first, retry_ms as u64);
    if let Some(token) = session {
        frame::encode_event(&mut first, Some(SESSION_EVENT), None, token.as_bytes());
    }
    if !refused.is_empty() {
        let names: Vec<&str> = refused.iter().map(Pattern::as_str).collect();
        frame::encode_event(
            &mut first,
            Some(REFUSED_EVENT),
            None,
            names.join(",").as_bytes(),
        );
    }
    // SAFETY: the caller's contract.
    let Some(mut cl) = (unsafe { pool_chain(r, &first) }) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: `cl` was just built with a valid buffer.
    unsafe { (*cl.buf).set_flush(1) };
    request.output_filter(&mut cl).0
}

/// Answers with `status` and a short text/plain reason.
///
/// # Safety
/// `r` must be a live request whose header has not been sent.
pub unsafe fn send_error(r: *mut ngx_http_request_t, status: u32, reason: &str) -> ngx_int_t {
    // SAFETY: the caller's contract.
    unsafe {
        send_body(
            r,
            HTTPStatus(status as usize),
            "text/plain",
            reason.as_bytes(),
        )
    }
}

/// Answers with a complete body (errors, metrics).
///
/// # Safety
/// `r` must be a live request whose header has not been sent.
pub unsafe fn send_body(
    r: *mut ngx_http_request_t,
    status: HTTPStatus,
    content_type: &'static str,
    body: &[u8],
) -> ngx_int_t {
    // SAFETY: the caller's contract.
    let request = unsafe { Request::from_ngx_http_request(r) };
    let r = raw(request);
    let rc = request.discard_request_body().0;
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    request.set_status(status);
    request.set_content_length_n(body.len());
    // SAFETY: the caller's contract; a static string outlives the request.
    unsafe {
        let out = &mut (*r).headers_out;
        out.content_type = static_str(content_type);
        out.content_type_len = out.content_type.len;
        out.content_type_lowcase = ptr::null_mut();
    }
    let rc = request.send_header().0;
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || request.header_only() {
        return rc;
    }
    // SAFETY: the caller's contract.
    let Some(mut cl) = (unsafe { pool_chain(r, body) }) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: `cl` was just built with a valid buffer.
    unsafe {
        (*cl.buf).set_last_buf(1);
        (*cl.buf).set_last_in_chain(1);
    }
    request.output_filter(&mut cl).0
}

/// The raw request behind `request`, for fields `Request` has no method for.
pub fn raw(request: &mut Request) -> *mut ngx_http_request_t {
    (request as *mut Request).cast()
}

/// A one-off buffer copied into the request pool.
///
/// # Safety
/// `r` must be a live request.
unsafe fn pool_chain(r: *mut ngx_http_request_t, bytes: &[u8]) -> Option<ngx_chain_t> {
    // SAFETY: the caller's contract; the buffer is sized for `bytes`.
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
