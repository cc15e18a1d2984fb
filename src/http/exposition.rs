//! The `sse_metrics` location: the Prometheus text exposition (0.0.4) of
//! every worker's counters, summed from the shared zone.

use std::ptr;

use ngx::ffi::{ngx_http_request_t, ngx_int_t, NGX_HTTP_NOT_ALLOWED};
use ngx::http::{HTTPStatus, HttpModuleMainConf, Method, Request};
use sse_core::metrics as m;

use super::response::{send_body, send_error};
use crate::metrics;
use crate::ngx_ext::add_static_header;

/// The content handler of `sse_metrics` locations.
///
/// # Safety
/// nginx calls content handlers with a live main request.
pub unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: see above.
    let request = unsafe { Request::from_ngx_http_request(r) };
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        // SAFETY: `r` is live and its header is not sent.
        unsafe {
            add_static_header(r, "Allow", "GET, HEAD");
            return send_error(r, NGX_HTTP_NOT_ALLOWED, "sse: metrics are read with GET\n");
        }
    }
    let zone = crate::SseModule::main_conf(request).map_or(ptr::null_mut(), |c| c.metrics_zone);
    let (snap, workers) = metrics::snapshot(zone);
    let text = m::render(&snap, env!("CARGO_PKG_VERSION"), workers);
    // SAFETY: `r` is live and its header is not sent.
    unsafe {
        send_body(
            r,
            HTTPStatus(200),
            "text/plain; version=0.0.4; charset=utf-8",
            text.as_bytes(),
        )
    }
}
