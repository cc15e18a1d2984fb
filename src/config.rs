//! Configuration: the directive table, the typed main and location
//! configurations, and the handlers of directives that nginx's stock slot
//! setters cannot parse.
//!
//! | directive          | context                 | stored in               |
//! |--------------------|-------------------------|-------------------------|
//! | `sse_redis_url`    | http                    | [`MainConf::redis`]     |
//! | `sse_channel`      | location                | [`LocConf::channels`]   |
//! | `sse_heartbeat`    | http, server, location  | [`LocConf::heartbeat`]  |
//! | `sse_retry`        | http, server, location  | [`LocConf::retry`]      |
//! | `sse_max_backlog`  | http, server, location  | [`LocConf::max_backlog`]|
//! | `sse_max_channels` | http, server, location  | [`LocConf::max_channels`]|
//! | `sse_allow`        | http, server, location  | [`LocConf::allow`]      |
//! | `sse_user`         | http, server, location  | [`LocConf::user`]       |
//! | `sse_channel_patterns` | http, server, location | [`LocConf::patterns`] |
//! | `sse_refused`      | http, server, location  | [`LocConf::refused`]    |
//! | `sse_history`      | http, server, location  | [`LocConf::history`]    |
//! | `sse_history_start`| http, server, location  | [`LocConf::history_start`] |
//! | `sse_redis_prefix` | http                    | [`MainConf::prefix`]    |
//! | `sse_max_message_size` | http                | [`MainConf::max_message`] |
//! | `sse_metrics`      | location                | (the location's handler) |
//! | `sse_session`      | http, server, location  | [`LocConf::session`]    |
//! | `sse_subscribe`    | location                | (the location's handler) |
//! | `sse_subscribe_timeout` | http, server, location | [`LocConf::subscribe_timeout`] |

use std::ffi::{c_char, c_void};
use std::mem::offset_of;
use std::ptr::{self, addr_of_mut};

use ngx::core::NGX_CONF_ERROR;
use ngx::ffi::{
    ngx_command_t, ngx_conf_check_num_bounds, ngx_conf_enum_t, ngx_conf_num_bounds_t,
    ngx_conf_set_enum_slot, ngx_conf_set_flag_slot, ngx_conf_set_msec_slot, ngx_conf_set_num_slot,
    ngx_conf_set_size_slot, ngx_conf_t, ngx_flag_t, ngx_http_compile_complex_value,
    ngx_http_compile_complex_value_t, ngx_http_complex_value_t, ngx_int_t, ngx_msec_t,
    ngx_parse_url, ngx_pcalloc, ngx_str_t, ngx_uint_t, ngx_url_t, NGX_CONF_1MORE, NGX_CONF_FLAG,
    NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET,
    NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_SRV_CONF, NGX_LOG_EMERG, NGX_LOG_WARN,
    NGX_OK,
};
use ngx::http::{
    HttpModuleLocationConf, HttpModuleMainConf, Merge, MergeConfigError, NgxHttpCoreModule,
};
use ngx::{ngx_conf_log_error, ngx_string};
use sse_core::channel;
use sse_core::pattern::{Grants, Pattern};
use sse_core::redis_url::RedisUrl;

use crate::ngx_ext::{conf_args, NgxStrExt};
use crate::redis::{Peer, RedisTarget};

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_HEARTBEAT_MS: ngx_msec_t = 15_000;
pub const DEFAULT_RETRY_MS: ngx_msec_t = 3_000;
pub const DEFAULT_MAX_BACKLOG: usize = 1024 * 1024;
pub const DEFAULT_MAX_CHANNELS: ngx_int_t = 32;
/// How long a forwarded live change waits for the stream's worker.
pub const DEFAULT_SUBSCRIBE_TIMEOUT_MS: ngx_msec_t = 5_000;
/// Messages larger than this are skipped (`sse_max_message_size`).
pub const DEFAULT_MAX_MESSAGE: usize = 1024 * 1024;
/// Upper bound of `sse_max_channels`: a connection is one fan-out entry per
/// channel, and a request line this long would not fit nginx's buffers anyway.
pub const MAX_MAX_CHANNELS: ngx_int_t = 1024;

// nginx's "not set" markers (NGX_CONF_UNSET_*), which the slot setters test.
const UNSET_MSEC: ngx_msec_t = ngx_msec_t::MAX;
const UNSET_SIZE: usize = usize::MAX;
const UNSET_NUM: ngx_int_t = -1;
const UNSET_FLAG: ngx_flag_t = -1;
const UNSET_UINT: ngx_uint_t = ngx_uint_t::MAX;

/// http-level configuration.
pub struct MainConf {
    /// Set by `sse_redis_url`, or the default in [`init_main_conf`].
    pub redis: Option<RedisTarget>,
    /// Whether any location uses `sse_channel`: if none does, workers do not
    /// open a Redis connection at all.
    pub used: bool,
    /// Whether any SSE location keeps history: then workers also open a
    /// commands connection (and load the `sse_publish` function).
    pub history_used: bool,
    /// Whether live channel changes are used (`sse_session on` on an SSE
    /// location, or an `sse_subscribe` location): then workers subscribe
    /// to their node channel and open a commands connection.
    pub sessions_used: bool,
    /// `sse_redis_prefix`: the prefix of every Redis key of the history.
    pub prefix: Option<String>,
    /// `sse_max_message_size` (nginx's size slot, hence the UNSET marker
    /// until [`init_main_conf`]).
    pub max_message: usize,
    /// The shared zone the workers count metrics into.
    pub metrics_zone: *mut ngx::ffi::ngx_shm_zone_t,
}

impl Default for MainConf {
    fn default() -> Self {
        MainConf {
            redis: None,
            used: false,
            history_used: false,
            sessions_used: false,
            prefix: None,
            max_message: UNSET_SIZE,
            metrics_zone: ptr::null_mut(),
        }
    }
}

pub const DEFAULT_PREFIX: &str = "sse";

impl MainConf {
    pub fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or(DEFAULT_PREFIX)
    }
}

/// What `sse_refused` says to do with requested channels the grants do not
/// cover.
pub const REFUSED_DENY: ngx_uint_t = 0;
pub const REFUSED_DROP: ngx_uint_t = 1;

/// location-level configuration. Scalar fields use nginx's slot setters,
/// hence the C types and the UNSET markers.
pub struct LocConf {
    /// The compiled values of `sse_channel`; empty: not an SSE location.
    pub channels: Vec<*mut ngx_http_complex_value_t>,
    /// The source text of those values, for the open-location warning.
    channel_sources: Vec<String>,
    /// Where `sse_channel` was written (location and file:line), for that
    /// warning.
    location: String,
    /// `sse_allow`: `None` is an open location (no access control).
    pub allow: Option<Vec<*mut ngx_http_complex_value_t>>,
    /// `sse_user`.
    pub user: Option<*mut ngx_http_complex_value_t>,
    pub heartbeat: ngx_msec_t,
    pub retry: ngx_msec_t,
    pub max_backlog: usize,
    pub max_channels: ngx_int_t,
    pub patterns: ngx_flag_t,
    pub refused: ngx_uint_t,
    pub history: ngx_flag_t,
    /// `sse_history_start`: 0 is `newest`, N the last N messages.
    pub history_start: ngx_int_t,
    /// `sse_session`: streams can be changed live.
    pub session: ngx_flag_t,
    /// `sse_subscribe`: this location changes streams.
    pub subscribe: bool,
    pub subscribe_timeout: ngx_msec_t,
}

impl Default for LocConf {
    fn default() -> Self {
        LocConf {
            channels: Vec::new(),
            channel_sources: Vec::new(),
            location: String::new(),
            allow: None,
            user: None,
            heartbeat: UNSET_MSEC,
            retry: UNSET_MSEC,
            max_backlog: UNSET_SIZE,
            max_channels: UNSET_NUM,
            patterns: UNSET_FLAG,
            refused: UNSET_UINT,
            history: UNSET_FLAG,
            history_start: UNSET_NUM,
            session: UNSET_FLAG,
            subscribe: false,
            subscribe_timeout: UNSET_MSEC,
        }
    }
}

impl Merge for LocConf {
    fn merge(&mut self, prev: &LocConf) -> Result<(), MergeConfigError> {
        // sse_channel is not inherited: a nested location is an SSE endpoint
        // only if it says so itself (its content handler is its own).
        merge(
            &mut self.heartbeat,
            prev.heartbeat,
            UNSET_MSEC,
            DEFAULT_HEARTBEAT_MS,
        );
        merge(&mut self.retry, prev.retry, UNSET_MSEC, DEFAULT_RETRY_MS);
        merge(
            &mut self.max_backlog,
            prev.max_backlog,
            UNSET_SIZE,
            DEFAULT_MAX_BACKLOG,
        );
        merge(
            &mut self.max_channels,
            prev.max_channels,
            UNSET_NUM,
            DEFAULT_MAX_CHANNELS,
        );
        merge(&mut self.patterns, prev.patterns, UNSET_FLAG, 0);
        merge(&mut self.history, prev.history, UNSET_FLAG, 0);
        merge(&mut self.history_start, prev.history_start, UNSET_NUM, 0);
        merge(&mut self.refused, prev.refused, UNSET_UINT, REFUSED_DENY);
        merge(&mut self.session, prev.session, UNSET_FLAG, 0);
        merge(
            &mut self.subscribe_timeout,
            prev.subscribe_timeout,
            UNSET_MSEC,
            DEFAULT_SUBSCRIBE_TIMEOUT_MS,
        );
        if self.allow.is_none() {
            self.allow = prev.allow.clone();
        }
        if self.user.is_none() {
            self.user = prev.user;
        }
        Ok(())
    }
}

fn merge<T: PartialEq + Copy>(this: &mut T, prev: T, unset: T, default: T) {
    if *this == unset {
        *this = if prev == unset { default } else { prev };
    }
}

static mut MAX_CHANNELS_BOUNDS: ngx_conf_num_bounds_t = ngx_conf_num_bounds_t {
    post_handler: Some(ngx_conf_check_num_bounds),
    low: 1,
    high: MAX_MAX_CHANNELS,
};

static mut REFUSED_MODES: [ngx_conf_enum_t; 3] = [
    ngx_conf_enum_t {
        name: ngx_string!("deny"),
        value: REFUSED_DENY,
    },
    ngx_conf_enum_t {
        name: ngx_string!("drop"),
        value: REFUSED_DROP,
    },
    ngx_conf_enum_t {
        name: ngx_str_t::empty(),
        value: 0,
    },
];

const ANY_LEVEL: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

pub static mut COMMANDS: [ngx_command_t; 19] = [
    ngx_command_t {
        name: ngx_string!("sse_redis_url"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(set_redis_url),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_channel"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_1MORE) as ngx_uint_t,
        set: Some(set_channel),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_heartbeat"),
        type_: (ANY_LEVEL | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(set_heartbeat),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: offset_of!(LocConf, heartbeat),
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_retry"),
        type_: (ANY_LEVEL | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(ngx_conf_set_msec_slot),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: offset_of!(LocConf, retry),
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_max_backlog"),
        type_: (ANY_LEVEL | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(ngx_conf_set_size_slot),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: offset_of!(LocConf, max_backlog),
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_max_channels"),
        type_: (ANY_LEVEL | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(ngx_conf_set_num_slot),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: offset_of!(LocConf, max_channels),
        // Only the address is taken; nginx reads the bounds at configuration
        // time on its single thread.
        post: addr_of_mut!(MAX_CHANNELS_BOUNDS) as *mut c_void,
    },
    ngx_command_t {
        name: ngx_string!("sse_allow"),
        type_: (ANY_LEVEL | NGX_CONF_1MORE) as ngx_uint_t,
        set: Some(set_allow),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_user"),
        type_: (ANY_LEVEL | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(set_user),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_channel_patterns"),
        type_: (ANY_LEVEL | NGX_CONF_FLAG) as ngx_uint_t,
        set: Some(ngx_conf_set_flag_slot),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: offset_of!(LocConf, patterns),
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_refused"),
        type_: (ANY_LEVEL | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(ngx_conf_set_enum_slot),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: offset_of!(LocConf, refused),
        post: addr_of_mut!(REFUSED_MODES) as *mut c_void,
    },
    ngx_command_t {
        name: ngx_string!("sse_history"),
        type_: (ANY_LEVEL | NGX_CONF_FLAG) as ngx_uint_t,
        set: Some(ngx_conf_set_flag_slot),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: offset_of!(LocConf, history),
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_history_start"),
        type_: (ANY_LEVEL | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(set_history_start),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: offset_of!(LocConf, history_start),
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_redis_prefix"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(set_prefix),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_max_message_size"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(ngx_conf_set_size_slot),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: offset_of!(MainConf, max_message),
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_session"),
        type_: (ANY_LEVEL | NGX_CONF_FLAG) as ngx_uint_t,
        set: Some(ngx_conf_set_flag_slot),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: offset_of!(LocConf, session),
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_subscribe"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS) as ngx_uint_t,
        set: Some(set_subscribe),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_subscribe_timeout"),
        type_: (ANY_LEVEL | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(ngx_conf_set_msec_slot),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: offset_of!(LocConf, subscribe_timeout),
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("sse_metrics"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS) as ngx_uint_t,
        set: Some(set_metrics),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

/// `sse_metrics;` — the location answers the Prometheus exposition.
extern "C" fn set_metrics(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: `cf` is the configuration being parsed, in a location block.
    if let Some(clcf) = NgxHttpCoreModule::location_conf_mut(unsafe { &*cf }) {
        clcf.handler = Some(crate::http::exposition::handler);
    }
    ptr::null_mut()
}

/// `sse_subscribe;` — the location takes live channel changes.
extern "C" fn set_subscribe(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    if lcf.subscribe {
        return ConfError::Duplicate.report(cf);
    }
    lcf.subscribe = true;
    // SAFETY: `cf` is the configuration being parsed, in a location block.
    let cf_ref = unsafe { &*cf };
    if let Some(clcf) = NgxHttpCoreModule::location_conf_mut(cf_ref) {
        clcf.handler = Some(crate::http::control::handler);
    }
    if let Some(main) = crate::SseModule::main_conf_mut(cf_ref) {
        main.used = true;
        main.sessions_used = true;
    }
    ptr::null_mut()
}

/// Most messages `sse_history_start` may replay per channel.
pub const MAX_HISTORY_START: ngx_int_t = 10_000;

/// `sse_history_start newest | N;`
extern "C" fn set_history_start(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration and the
    // directive's arguments.
    let (lcf, args) = unsafe { (&mut *(conf as *mut LocConf), conf_args(cf)) };
    if lcf.history_start != UNSET_NUM {
        return ConfError::Duplicate.report(cf);
    }
    let value = args[1].to_string_lossy();
    lcf.history_start = match value.as_str() {
        "newest" => 0,
        n => match n.parse::<ngx_int_t>() {
            Ok(n) if (1..=MAX_HISTORY_START).contains(&n) => n,
            _ => {
                return ConfError::BadValue(
                    value,
                    format!("expected \"newest\" or a count from 1 to {MAX_HISTORY_START}"),
                )
                .report(cf)
            }
        },
    };
    ptr::null_mut()
}

/// `sse_redis_prefix PREFIX;` — the same rules as a channel name, so keys
/// stay readable and never collide with `:`-less junk.
extern "C" fn set_prefix(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration and the
    // directive's arguments.
    let (main, args) = unsafe { (&mut *(conf as *mut MainConf), conf_args(cf)) };
    if main.prefix.is_some() {
        return ConfError::Duplicate.report(cf);
    }
    let value = args[1].to_string_lossy();
    if let Err(e) = sse_core::channel::ChannelName::parse(value.as_bytes()) {
        return ConfError::BadValue(value, e.to_string()).report(cf);
    }
    main.prefix = Some(value);
    ptr::null_mut()
}

/// A configuration error, turned into an `nginx -t` message that names the
/// directive and the offending value.
enum ConfError {
    BadRedisUrl(String, sse_core::redis_url::UrlError),
    Unresolvable(String, String),
    BadChannel(String, channel::ChannelError),
    BadComplexValue(String),
    Duplicate,
    BadGrant(String, String),
    BadValue(String, String),
}

impl ConfError {
    /// Reports the error for the directive being parsed (its name is the
    /// first of its arguments).
    fn report(&self, cf: *mut ngx_conf_t) -> *mut c_char {
        // SAFETY: called from directive handlers, while `cf->args` holds
        // the directive being parsed.
        let directive = unsafe { conf_args(cf) }
            .first()
            .map_or_else(String::new, |name| name.to_string_lossy());
        self.report_as(cf, &directive)
    }

    /// Reports the error for `directive` (outside its handler: defaults).
    fn report_as(&self, cf: *mut ngx_conf_t, directive: &str) -> *mut c_char {
        match self {
            ConfError::BadRedisUrl(value, err) => {
                ngx_conf_log_error!(NGX_LOG_EMERG, cf, "\"{directive}\": URL \"{value}\" {err}");
            }
            ConfError::Unresolvable(value, err) => {
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "\"{directive}\": cannot resolve \"{value}\": {err}"
                );
            }
            ConfError::BadChannel(value, err) => {
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "\"{directive}\": invalid channel \"{value}\": {err}"
                );
            }
            ConfError::BadComplexValue(value) => {
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "\"{directive}\": cannot compile \"{value}\""
                );
            }
            ConfError::BadGrant(value, entries) => {
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "\"{directive}\": invalid pattern(s) {entries} in \"{value}\""
                );
            }
            ConfError::BadValue(value, why) => {
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "\"{directive}\": invalid value \"{value}\": {why}"
                );
            }
            ConfError::Duplicate => {
                ngx_conf_log_error!(NGX_LOG_EMERG, cf, "\"{directive}\" directive is duplicate");
            }
        }
        NGX_CONF_ERROR as *mut c_char
    }
}

/// Parses the URL and resolves its hosts once (the server, or each
/// Sentinel), with nginx's own resolver for configuration-time names
/// (`ngx_parse_url`, as `proxy_pass` does).
unsafe fn redis_target(cf: *mut ngx_conf_t, value: &str) -> Result<RedisTarget, ConfError> {
    let url = RedisUrl::parse(value).map_err(|e| ConfError::BadRedisUrl(value.to_string(), e))?;
    let addresses = match (&url.sentinel, &url.cluster) {
        (Some(sentinel), _) => sentinel.nodes.clone(),
        (None, Some(seeds)) => seeds.clone(),
        (None, None) => vec![url.address()],
    };
    let mut peers = Vec::with_capacity(addresses.len());
    for address in addresses {
        // SAFETY: configuration time (the caller's contract).
        peers.push(unsafe { resolve(cf, &address) }?);
    }
    Ok(RedisTarget { url, peers })
}

/// Resolves `host:port` to its first address.
unsafe fn resolve(cf: *mut ngx_conf_t, address: &str) -> Result<Peer, ConfError> {
    // SAFETY: ngx_url_t is a plain C struct for which all-zero is the
    // documented initial state; the pool outlives the configuration.
    let mut u: ngx_url_t = unsafe { std::mem::zeroed() };
    // SAFETY: the configuration pool is live at configuration time.
    u.url = unsafe { ngx_str_t::from_bytes((*cf).pool, address.as_bytes()) }
        .ok_or_else(|| ConfError::Unresolvable(address.to_string(), "out of memory".into()))?;
    u.default_port = sse_core::redis_url::DEFAULT_PORT;
    // SAFETY: `u` is initialised above and the pool is the cycle's.
    if unsafe { ngx_parse_url((*cf).pool, &mut u) } != NGX_OK as ngx_int_t || u.naddrs == 0 {
        let err = if u.err.is_null() {
            "no address".to_string()
        } else {
            // SAFETY: nginx sets `err` to a static NUL-terminated string.
            unsafe { std::ffi::CStr::from_ptr(u.err) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(ConfError::Unresolvable(address.to_string(), err));
    }
    // SAFETY: naddrs > 0, so addrs points to at least one resolved address,
    // allocated from the configuration pool; Peer copies it.
    Ok(unsafe {
        let addr = &*u.addrs;
        Peer::from_raw(addr.sockaddr, addr.socklen, addr.name.as_bytes())
    })
}

extern "C" fn set_redis_url(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration for an
    // NGX_HTTP_MAIN_CONF_OFFSET directive, and the directive's arguments.
    let (main, args) = unsafe { (&mut *(conf as *mut MainConf), conf_args(cf)) };
    if main.redis.is_some() {
        return ConfError::Duplicate.report(cf);
    }
    let value = args[1].to_string_lossy();
    // SAFETY: called at configuration time with nginx's conf context.
    match unsafe { redis_target(cf, &value) } {
        Ok(target) => {
            main.redis = Some(target);
            ptr::null_mut()
        }
        Err(e) => e.report(cf),
    }
}

/// Fills in the default Redis URL when `sse_redis_url` is absent.
pub unsafe extern "C" fn init_main_conf(cf: *mut ngx_conf_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes the main configuration this module created.
    let main = unsafe { &mut *(conf as *mut MainConf) };
    if main.max_message == UNSET_SIZE {
        main.max_message = DEFAULT_MAX_MESSAGE;
    }
    // SAFETY: configuration time, nginx's conf context.
    match unsafe { crate::metrics::add_zone(cf) } {
        Ok(zone) => main.metrics_zone = zone,
        Err(e) => return e,
    }
    if main.redis.is_none() {
        // SAFETY: configuration time, nginx's conf context.
        match unsafe { redis_target(cf, DEFAULT_REDIS_URL) } {
            Ok(target) => main.redis = Some(target),
            Err(e) => return e.report_as(cf, "sse_redis_url"),
        }
    }
    ptr::null_mut()
}

extern "C" fn set_channel(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration for an
    // NGX_HTTP_LOC_CONF_OFFSET directive.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    if !lcf.channels.is_empty() {
        return ConfError::Duplicate.report(cf);
    }
    // SAFETY: the arguments of the directive being parsed.
    let args = unsafe { conf_args(cf) };
    for arg in &args[1..] {
        // SAFETY: compiling a complex value is what this struct is for; the
        // zeroed struct is its documented initial state, and the value is
        // allocated from the configuration pool.
        let cv = match unsafe { compile_complex_value(cf, arg) } {
            Some(cv) => cv,
            None => return ConfError::BadComplexValue(arg.to_string_lossy()).report(cf),
        };
        // A value without variables is checked now, so a typo fails `nginx -t`
        // instead of every request.
        // SAFETY: cv was just compiled by nginx.
        if unsafe { (*cv).lengths.is_null() } {
            let rules = channel::ListRules {
                max: usize::MAX,
                patterns: true,
            };
            if let Err(e) = channel::parse_channel_list(&[arg.as_bytes()], rules) {
                return ConfError::BadChannel(arg.to_string_lossy(), e).report(cf);
            }
        }
        lcf.channels.push(cv);
        lcf.channel_sources.push(arg.to_string_lossy());
    }

    // SAFETY: `cf` is the configuration being parsed, in a location block.
    let cf_ref = unsafe { &*cf };
    if let Some(clcf) = NgxHttpCoreModule::location_conf_mut(cf_ref) {
        clcf.handler = Some(crate::http::content_handler);
        // "/path" (nginx.conf:12): the warning below is emitted at merge
        // time, when nginx's own position is the end of the block.
        let name = clcf.name.to_string_lossy();
        // SAFETY: nginx sets `conf_file` to the file being parsed (or null).
        lcf.location = match unsafe { cf_ref.conf_file.as_ref() } {
            None => format!("\"{name}\""),
            Some(file) => format!(
                "\"{name}\" ({}:{})",
                file.file.name.to_string_lossy(),
                file.line
            ),
        };
    }
    if let Some(main) = crate::SseModule::main_conf_mut(cf_ref) {
        main.used = true;
    }
    ptr::null_mut()
}

unsafe fn compile_complex_value(
    cf: *mut ngx_conf_t,
    value: &ngx_str_t,
) -> Option<*mut ngx_http_complex_value_t> {
    // SAFETY: see set_channel.
    unsafe {
        let cv = ngx_pcalloc((*cf).pool, size_of::<ngx_http_complex_value_t>())
            as *mut ngx_http_complex_value_t;
        if cv.is_null() {
            return None;
        }
        let mut value = *value;
        let mut ccv: ngx_http_compile_complex_value_t = std::mem::zeroed();
        ccv.cf = cf;
        ccv.value = &mut value;
        ccv.complex_value = cv;
        (ngx_http_compile_complex_value(&mut ccv) == NGX_OK as ngx_int_t).then_some(cv)
    }
}

/// `sse_heartbeat TIME | off;` — nginx's msec slot plus the word `off`.
extern "C" fn set_heartbeat(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration and the
    // directive's arguments.
    let (lcf, args) = unsafe { (&mut *(conf as *mut LocConf), conf_args(cf)) };
    if args[1].as_bytes() == b"off" {
        if lcf.heartbeat != UNSET_MSEC {
            return ConfError::Duplicate.report(cf);
        }
        lcf.heartbeat = 0;
        return ptr::null_mut();
    }
    // SAFETY: same arguments as nginx passed to us.
    unsafe { ngx_conf_set_msec_slot(cf, cmd, conf) }
}

/// `sse_allow value ...;` — compiled now, evaluated per request. Literal
/// values are checked now: a typo in a grant fails `nginx -t`.
extern "C" fn set_allow(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration and the
    // directive's arguments.
    let (lcf, args) = unsafe { (&mut *(conf as *mut LocConf), conf_args(cf)) };
    if lcf.allow.is_some() {
        return ConfError::Duplicate.report(cf);
    }
    let mut values = Vec::with_capacity(args.len() - 1);
    for arg in &args[1..] {
        // SAFETY: see compile_complex_value.
        let Some(cv) = (unsafe { compile_complex_value(cf, arg) }) else {
            return ConfError::BadComplexValue(arg.to_string_lossy()).report(cf);
        };
        // SAFETY: cv was just compiled by nginx.
        if unsafe { (*cv).lengths.is_null() } {
            let (_, invalid) = Grants::parse(&[arg.as_bytes()]);
            if !invalid.is_empty() {
                return ConfError::BadGrant(arg.to_string_lossy(), invalid.join(", ")).report(cf);
            }
        }
        values.push(cv);
    }
    lcf.allow = Some(values);
    ptr::null_mut()
}

/// `sse_user value;`
extern "C" fn set_user(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration and the
    // directive's arguments.
    let (lcf, args) = unsafe { (&mut *(conf as *mut LocConf), conf_args(cf)) };
    if lcf.user.is_some() {
        return ConfError::Duplicate.report(cf);
    }
    // SAFETY: see compile_complex_value.
    match unsafe { compile_complex_value(cf, &args[1]) } {
        Some(cv) => {
            lcf.user = Some(cv);
            ptr::null_mut()
        }
        None => ConfError::BadComplexValue(args[1].to_string_lossy()).report(cf),
    }
}

/// Variables whose value the client chooses.
const CLIENT_INPUT: [&str; 6] = [
    "$arg_",
    "$http_",
    "$cookie_",
    "$args",
    "$query_string",
    "$request_uri",
];

/// merge_loc_conf: nginx's inheritance, then the open-location warning,
/// which needs the final (inherited) `sse_allow`.
pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    prev: *mut c_void,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes two location configurations of this module.
    let (prev, lcf) = unsafe { (&*(prev as *const LocConf), &mut *(conf as *mut LocConf)) };
    if lcf.merge(prev).is_err() {
        return NGX_CONF_ERROR as *mut c_char;
    }
    if lcf.subscribe && !lcf.channels.is_empty() {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "\"sse_subscribe\" and \"sse_channel\" cannot share location {}: a stream and its change requests need two locations",
            lcf.location
        );
        return NGX_CONF_ERROR as *mut c_char;
    }
    if !lcf.channels.is_empty() {
        // SAFETY: `cf` is the configuration being merged.
        if let Some(main) = crate::SseModule::main_conf_mut(unsafe { &*cf }) {
            main.history_used |= lcf.history == 1;
            main.sessions_used |= lcf.session == 1;
        }
    }
    if lcf.allow.is_none() {
        let client_input = lcf.channel_sources.iter().find(|v| {
            CLIENT_INPUT
                .iter()
                .any(|var| v.contains(var) || v.contains(&var.replace('$', "${")))
        });
        if let Some(value) = client_input {
            ngx_conf_log_error!(
                NGX_LOG_WARN,
                cf,
                "\"sse_channel {value}\" in location {} takes channels from client input and no \"sse_allow\" limits them: any client can read any channel",
                lcf.location
            );
        }
    }
    ptr::null_mut()
}

impl LocConf {
    /// Validates the evaluated `sse_channel` values of one request.
    pub fn subscriptions_for(
        &self,
        values: &[&[u8]],
    ) -> Result<Vec<Pattern>, channel::ChannelError> {
        let rules = channel::ListRules {
            max: usize::try_from(self.max_channels).unwrap_or(1),
            patterns: self.patterns == 1,
        };
        channel::parse_channel_list(values, rules)
    }

    /// The channel rules of this location (live changes follow them too).
    pub fn rules(&self) -> channel::ListRules {
        channel::ListRules {
            max: usize::try_from(self.max_channels).unwrap_or(1),
            patterns: self.patterns == 1,
        }
    }
}
