//! Small, safe-to-call wrappers around the raw nginx FFI that the rest of the
//! module would otherwise repeat.

use std::borrow::Cow;
use std::ptr;

use ngx::ffi::{
    ngx_array_t, ngx_conf_t, ngx_cycle, ngx_http_request_t, ngx_list_push, ngx_log_t, ngx_str_t,
    ngx_table_elt_t,
};

pub trait NgxStrExt {
    fn to_string_lossy(&self) -> String;
}

impl NgxStrExt for ngx_str_t {
    fn to_string_lossy(&self) -> String {
        match String::from_utf8_lossy(self.as_bytes()) {
            Cow::Borrowed(s) => s.to_string(),
            Cow::Owned(s) => s,
        }
    }
}

/// The arguments of the directive being parsed; `[0]` is its name.
///
/// # Safety
/// `cf` must be the configuration passed to a directive handler.
pub unsafe fn conf_args<'a>(cf: *mut ngx_conf_t) -> &'a [ngx_str_t] {
    // SAFETY: nginx sets `cf->args` to an array of ngx_str_t for each directive.
    unsafe {
        let args: &ngx_array_t = &*(*cf).args;
        args.as_slice()
    }
}

/// A `&'static str` as an ngx_str_t (nginx never writes through it).
pub fn static_str(s: &'static str) -> ngx_str_t {
    ngx_str_t {
        len: s.len(),
        data: s.as_ptr() as *mut u8,
    }
}

/// Adds a response header whose name and value are static strings.
///
/// # Safety
/// `r` must be a live request whose headers have not been sent yet.
pub unsafe fn add_static_header(
    r: *mut ngx_http_request_t,
    key: &'static str,
    value: &'static str,
) -> bool {
    // SAFETY: forwarded from the caller; static strings outlive the request.
    unsafe { push_header(r, key, static_str(value)) }
}

/// Adds a response header whose value is copied into the request pool.
///
/// # Safety
/// `r` must be a live request whose headers have not been sent yet.
pub unsafe fn add_pool_header(r: *mut ngx_http_request_t, key: &'static str, value: &[u8]) -> bool {
    // SAFETY: forwarded from the caller; the copy lives in the request pool.
    unsafe {
        match ngx_str_t::from_bytes((*r).pool, value) {
            Some(value) => push_header(r, key, value),
            None => false,
        }
    }
}

unsafe fn push_header(r: *mut ngx_http_request_t, key: &'static str, value: ngx_str_t) -> bool {
    // SAFETY: headers_out.headers is an ngx_list_t of ngx_table_elt_t of a
    // live request (caller's contract).
    unsafe {
        let h = ngx_list_push(&mut (*r).headers_out.headers) as *mut ngx_table_elt_t;
        if h.is_null() {
            return false;
        }
        // Zeroing also clears `next`, which exists from nginx 1.23 on.
        ptr::write_bytes(h, 0, 1);
        (*h).hash = 1;
        (*h).key = static_str(key);
        (*h).value = value;
    }
    true
}

/// The cycle's log, for events that belong to no request.
pub fn cycle_log() -> *mut ngx_log_t {
    // SAFETY: ngx_cycle is set before any module code runs and is only read
    // on the worker's (single) thread.
    unsafe { (*ngx_cycle).log }
}

/// `N` bytes from the kernel's CSPRNG (`getrandom(2)`, which blocks only
/// before the pool is first seeded, long before nginx starts); `None` if
/// the call fails.
pub fn random_bytes<const N: usize>() -> Option<[u8; N]> {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled part of `out`.
        let n = unsafe {
            libc::getrandom(
                out[filled..].as_mut_ptr() as *mut libc::c_void,
                N - filled,
                0,
            )
        };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        filled += n as usize;
    }
    Some(out)
}

/// What a timer's `ev->data` points to when the timer belongs to no
/// connection: a zeroed connection whose `fd` is -1 and whose `data` carries
/// `tag`. nginx's debug log reads `ev->data` as a connection (`fd`, in
/// `ngx_event_ident`) when a timer is added, deleted or fires, so `data`
/// must point to readable memory of that shape, never hold a number.
pub struct TimerIdent(Box<ngx::ffi::ngx_connection_t>);

impl TimerIdent {
    pub fn new(tag: *mut std::ffi::c_void) -> TimerIdent {
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut c: Box<ngx::ffi::ngx_connection_t> = Box::new(unsafe { std::mem::zeroed() });
        c.fd = -1;
        c.data = tag;
        TimerIdent(c)
    }

    /// The pointer for `ev->data`; valid as long as `self` lives.
    pub fn as_data(&mut self) -> *mut std::ffi::c_void {
        &mut *self.0 as *mut ngx::ffi::ngx_connection_t as *mut std::ffi::c_void
    }
}

/// The tag a [`TimerIdent`] carries, from a timer event's `data`.
///
/// # Safety
/// `data` must come from [`TimerIdent::as_data`] of a live `TimerIdent`.
pub unsafe fn timer_tag(data: *mut std::ffi::c_void) -> *mut std::ffi::c_void {
    // SAFETY: the caller's contract.
    unsafe { (*(data as *mut ngx::ffi::ngx_connection_t)).data }
}
