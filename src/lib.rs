//! nginx-sse: an nginx module that serves Server-Sent Events fed by Redis
//! pub/sub.
//!
//! Layout, top to bottom (each layer uses only the ones below it; the two
//! lower layers that must call back up, streams ending and Redis events, do
//! it through hooks the worker installs at start):
//! - [`config`]: directives, typed configuration, `nginx -t` errors (its
//!   `sse_channel` installs the content handler, as nginx modules do);
//! - [`http`]: the content handlers: admission, response header, opening;
//!   live channel changes (`sse_subscribe`); metrics;
//! - [`worker`]: per-worker state, process start and shutdown, live
//!   changes (applied, or forwarded to the worker that holds the stream),
//!   and [`fanout`], what the worker does with what Redis hands it;
//! - [`stream`]: one open stream: queue, flush, the one way it ends, and
//!   nginx's callbacks into it;
//! - [`replay`]: a stream's history replay and de-duplication; [`lanes`],
//!   the same per channel on a Redis Cluster;
//! - [`transport`]: how bytes reach the client (nginx's output filters, or
//!   written directly once the request is retired);
//! - [`redis`]: the worker's Redis connections and their two protocols;
//! - [`metrics`]: counters in shared memory and the `sse_metrics` handler;
//! - [`frame`], [`ngx_ext`]: shared event bytes, small FFI wrappers.
//!
//! The wire format, channel rules, Redis protocol and registry are pure Rust
//! in the `sse-core` crate, where they are unit-tested.

use std::ptr::{addr_of, addr_of_mut};

use ngx::ffi::{ngx_http_module_t, ngx_module_t, NGX_HTTP_MODULE};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf};

/// A debug-level log line: compiled in, written only by an nginx built
/// `--with-debug` whose `error_log` level is `debug` (as `debug_http`).
#[macro_export]
macro_rules! sse_debug {
    ($log:expr, $($arg:tt)+) => {
        ngx::ngx_log_debug_mask!(DebugMask::Http, $log, $($arg)+)
    };
}

mod config;
mod fanout;
mod frame;
mod http;
mod metrics;
mod ngx_ext;
mod redis;
mod replay;
mod stream;
mod transport;
mod worker;

pub struct SseModule;

impl HttpModule for SseModule {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module static is only written by nginx while loading
        // the configuration (indices), never concurrently with this read.
        unsafe { &*addr_of!(ngx_http_sse_module) }
    }
}

// SAFETY: the main configuration of this module is a MainConf, created by
// `create_main_conf` below.
unsafe impl HttpModuleMainConf for SseModule {
    type MainConf = config::MainConf;
}

// SAFETY: the location configuration of this module is a LocConf, created by
// `create_loc_conf` below.
unsafe impl HttpModuleLocationConf for SseModule {
    type LocationConf = config::LocConf;
}

static NGX_HTTP_SSE_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: None,
    create_main_conf: Some(SseModule::create_main_conf),
    init_main_conf: Some(config::init_main_conf),
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(SseModule::create_loc_conf),
    merge_loc_conf: Some(config::merge_loc_conf),
};

#[used]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_sse_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(NGX_HTTP_SSE_MODULE_CTX) as *mut _,
    commands: addr_of_mut!(config::COMMANDS) as *mut _,
    type_: NGX_HTTP_MODULE as _,
    init_process: Some(worker::init_process),
    exit_process: Some(worker::exit_process),
    ..ngx_module_t::default()
};

ngx::ngx_modules!(ngx_http_sse_module);
