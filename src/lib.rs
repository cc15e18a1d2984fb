//! nginx-sse: an nginx module that serves Server-Sent Events fed by Redis
//! pub/sub.
//!
//! Layout (one file per concern):
//! - [`config`]: directives, typed configuration, `nginx -t` errors;
//! - [`stream`]: the content handler and the life of one SSE connection;
//! - [`direct`]: the request-free transport of HTTP/1.x streams;
//! - [`worker`]: per-worker state, fan-out, process start and shutdown;
//! - [`redis`]: the worker's Redis connections inside nginx's event loop;
//! - [`history`]: replay, catch-up and de-duplication of one stream;
//! - [`ngx_ext`]: small wrappers around the raw FFI.
//!
//! The wire format, channel rules, Redis protocol and registry are pure Rust
//! in the `sse-core` crate, where they are unit-tested.

use std::ptr::{addr_of, addr_of_mut};

use ngx::ffi::{ngx_http_module_t, ngx_module_t, NGX_HTTP_MODULE};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf};

mod config;
mod direct;
mod history;
mod ngx_ext;
mod redis;
mod stream;
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
