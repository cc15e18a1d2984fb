//! The Redis bridge: non-blocking Redis connections driven by nginx's own
//! event loop (no thread, no async runtime). Each worker has one
//! *subscriber* connection (SUBSCRIBE/PSUBSCRIBE, messages in) and, when
//! some location keeps history, one *commands* connection (history reads:
//! requests and replies matched in order).
//!
//! - [`connection`]: the socket, its states, backoff, timers and logging,
//!   the same for both roles;
//! - [`subscriber`] and [`commands`]: the two conversations, each a
//!   [`connection::Protocol`].
//!
//! The bridge knows nothing of streams: it hands what it reads to a sink
//! trait the worker implements, and nginx's events reach the worker through
//! the hook the worker installs ([`set_event_hook`]).

pub mod commands;
pub mod connection;
pub mod subscriber;

use std::cell::Cell;
use std::ffi::c_void;

use ngx::ffi::{ngx_connection_t, ngx_event_t, ngx_str_t};
use sse_core::redis_url::RedisUrl;

pub use commands::{Commands, CommandsSink, Request};
pub use connection::Connection;
pub use subscriber::{Subscriber, SubscriberSink};

/// Where the worker's Redis connection goes: the parsed URL and the address
/// nginx resolved for it at configuration time (as for `proxy_pass`).
pub struct RedisTarget {
    pub url: RedisUrl,
    pub sockaddr: *mut ngx::ffi::sockaddr,
    pub socklen: ngx::ffi::socklen_t,
    /// `host:port` text for log lines; lives in the configuration pool.
    pub name: ngx_str_t,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Subscriber = 1,
    Commands = 2,
}

impl Role {
    /// Roles travel in `c->data` and timer `ev->data` (no pointer needed:
    /// there is one connection of each role per worker).
    fn tag(self) -> *mut c_void {
        self as usize as *mut c_void
    }

    fn from_tag(tag: *mut c_void) -> Option<Role> {
        match tag as usize {
            1 => Some(Role::Subscriber),
            2 => Some(Role::Commands),
            _ => None,
        }
    }
}

/// What happened to one of the worker's Redis connections.
#[derive(Clone, Copy, Debug)]
pub enum RedisEvent {
    Start,
    Readable,
    Writable,
    Reconnect,
    Ping,
}

/// Where nginx's events on Redis connections go.
pub type EventHook = fn(Role, RedisEvent, *mut ngx_event_t);

thread_local! {
    static EVENT_HOOK: Cell<EventHook> = const { Cell::new(|_, _, _| {}) };
}

/// Installs where the Redis connections' events go (the worker).
pub fn set_event_hook(hook: EventHook) {
    EVENT_HOOK.with(|h| h.set(hook));
}

fn emit(role: Role, event: RedisEvent, ev: *mut ngx_event_t) {
    let hook = EVENT_HOOK.with(Cell::get);
    hook(role, event, ev);
}

/// The role of a connection event's connection.
///
/// # Safety
/// `ev` must be an event of a live connection.
unsafe fn connection_role(ev: *mut ngx_event_t) -> Option<Role> {
    // SAFETY: connection events carry their connection in `data`, and our
    // connections carry their role tag.
    unsafe { Role::from_tag((*((*ev).data as *mut ngx_connection_t)).data) }
}

unsafe extern "C" fn read_handler(ev: *mut ngx_event_t) {
    // SAFETY: nginx passes the read event of one of our connections.
    if let Some(role) = unsafe { connection_role(ev) } {
        emit(role, RedisEvent::Readable, ev);
    }
}

unsafe extern "C" fn write_handler(ev: *mut ngx_event_t) {
    // SAFETY: nginx passes the write event of one of our connections.
    if let Some(role) = unsafe { connection_role(ev) } {
        emit(role, RedisEvent::Writable, ev);
    }
}

unsafe extern "C" fn reconnect_handler(ev: *mut ngx_event_t) {
    // SAFETY: our timers carry their role tag in `data`.
    if let Some(role) = Role::from_tag(unsafe { (*ev).data }) {
        emit(role, RedisEvent::Reconnect, ev);
    }
}

unsafe extern "C" fn ping_handler(ev: *mut ngx_event_t) {
    // SAFETY: our timers carry their role tag in `data`.
    if let Some(role) = Role::from_tag(unsafe { (*ev).data }) {
        emit(role, RedisEvent::Ping, ev);
    }
}
