//! The `sse_subscribe` location: live channel changes of open streams.
//!
//! Like nginx's own small handlers, it reads top to bottom: method, body
//! size, read the body, parse it (`sse_core::session`), evaluate the
//! request's `sse_user` and `sse_allow`, then hand the change to the worker,
//! which applies it here or forwards it to the worker that holds the stream
//! (and answers later, through [`finish`]).

use ngx::ffi::{
    ngx_chain_t, ngx_http_finalize_request, ngx_http_read_client_request_body, ngx_http_request_t,
    ngx_int_t, NGX_DONE, NGX_HTTP_NOT_ALLOWED, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
    NGX_HTTP_SPECIAL_RESPONSE,
};
use ngx::http::{HTTPStatus, HttpModuleLocationConf, Method, Request};
use sse_core::metrics::Counter;
use sse_core::session::{self, Change, MAX_BODY};

use super::admission;
use super::response::{self, send_body};
use crate::metrics;
use crate::ngx_ext::add_static_header;
use crate::worker::{self, ChangeOutcome};
use crate::SseModule;

/// The content handler of `sse_subscribe` locations.
///
/// # Safety
/// nginx calls content handlers with a live main request on the worker
/// thread.
pub unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: see above.
    let request = unsafe { Request::from_ngx_http_request(r) };
    if request.method() != Method::POST {
        metrics::count(Counter::ChangesRefused, 1);
        // SAFETY: `r` is live and its header is not sent.
        unsafe {
            add_static_header(r, "Allow", "POST");
            return response::send_error(
                r,
                NGX_HTTP_NOT_ALLOWED,
                "sse: a channel change is a POST\n",
            );
        }
    }
    // SAFETY: `r` is live.
    let declared = unsafe { (*r).headers_in.content_length_n };
    if declared > MAX_BODY as i64 {
        metrics::count(Counter::ChangesRefused, 1);
        // SAFETY: as above.
        return unsafe { too_large(r) };
    }
    // SAFETY: `r` is live; nginx calls `body_read` once the body is in
    // (possibly before this returns), and holds the request until then.
    let rc = unsafe { ngx_http_read_client_request_body(r, Some(body_read)) };
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        return rc;
    }
    NGX_DONE as ngx_int_t
}

/// The body is read: decide, then answer now or let the worker answer.
unsafe extern "C" fn body_read(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls the body handler with the live request.
    let Some(body) = (unsafe { body(r) }) else {
        metrics::count(Counter::ChangesRefused, 1);
        // SAFETY: as above; finalizing with the answer's status.
        unsafe { ngx_http_finalize_request(r, too_large(r)) };
        return;
    };
    // SAFETY: as above.
    match unsafe { decide(r, &body) } {
        // SAFETY: as above.
        ChangeOutcome::Done(status, body) => unsafe { finish(r, status, &body) },
        ChangeOutcome::Waiting => {}
    }
}

/// The body's bytes; `None` if it is over [`MAX_BODY`] or nginx kept it in
/// a file (larger than `client_body_buffer_size`).
///
/// # Safety
/// `r` must be live, its body read.
unsafe fn body(r: *mut ngx_http_request_t) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    // SAFETY: the caller's contract: nginx filled request_body->bufs.
    unsafe {
        let rb = (*r).request_body;
        if rb.is_null() {
            return Some(out);
        }
        let mut cl: *mut ngx_chain_t = (*rb).bufs;
        while !cl.is_null() {
            let b = (*cl).buf;
            if (*b).in_file() != 0 {
                return None;
            }
            let len = (*b).last.offset_from((*b).pos) as usize;
            if out.len() + len > MAX_BODY {
                return None;
            }
            out.extend_from_slice(std::slice::from_raw_parts((*b).pos, len));
            cl = (*cl).next;
        }
    }
    Some(out)
}

/// Parses and checks the change, then hands it to the worker.
///
/// # Safety
/// `r` must be live, its body read and not yet answered.
unsafe fn decide(r: *mut ngx_http_request_t, body: &[u8]) -> ChangeOutcome {
    // SAFETY: the caller's contract.
    let request = unsafe { Request::from_ngx_http_request(r) };
    let Some(lcf) = SseModule::location_conf(request) else {
        return ChangeOutcome::Done(500, b"sse: no configuration\n".to_vec());
    };
    let form = match session::parse_form(body) {
        Ok(form) => form,
        Err(e) => return ChangeOutcome::Done(400, format!("sse: {e}\n").into_bytes()),
    };
    let refused =
        |e: admission::Refusal| ChangeOutcome::Done(e.status as u16, e.reason.into_bytes());
    let user = match admission::user_of(request, lcf) {
        Ok(user) => user,
        Err(e) => return refused(e),
    };
    let grants = match admission::grants_of(request, lcf) {
        Ok(grants) => grants,
        Err(e) => return refused(e),
    };
    let change = Change {
        from: 0,
        request: 0,
        session: form.session,
        user,
        grants,
        add: form.add,
        remove: form.remove,
        since: form.since,
    };
    // SAFETY: `r` is live and answered only through `finish` from here on.
    unsafe { worker::change(change, r, lcf.subscribe_timeout, finish) }
}

/// Answers a change request with `status` and a text/plain body, and
/// finalizes it.
///
/// # Safety
/// `r` must be live and not yet answered.
unsafe fn finish(r: *mut ngx_http_request_t, status: u16, body: &[u8]) {
    let counter = match status {
        200 => Counter::ChangesApplied,
        404 => Counter::ChangesUnknown,
        503 => Counter::ChangesUnavailable,
        504 => Counter::ChangesTimeout,
        _ => Counter::ChangesRefused,
    };
    metrics::count(counter, 1);
    // SAFETY: the caller's contract.
    unsafe {
        let rc = send_body(
            r,
            HTTPStatus(status as usize),
            "text/plain; charset=utf-8",
            body,
        );
        ngx_http_finalize_request(r, rc);
    }
}

/// 413 with the reason.
///
/// # Safety
/// `r` must be live and not yet answered.
unsafe fn too_large(r: *mut ngx_http_request_t) -> ngx_int_t {
    let reason = format!(
        "sse: a channel change body is at most {MAX_BODY} bytes (and within client_body_buffer_size)\n"
    );
    // SAFETY: the caller's contract.
    unsafe { response::send_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, &reason) }
}
