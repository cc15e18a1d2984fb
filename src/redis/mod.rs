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
pub mod sentinel;
pub mod shards;
pub mod subscriber;

use std::cell::Cell;
use std::ffi::c_void;

use ngx::ffi::{ngx_connection_t, ngx_event_t};
use sse_core::redis_url::RedisUrl;

pub use commands::{Commands, CommandsSink, Request};
pub use connection::Connection;
pub use sentinel::{SentinelSink, SentinelWatch};
pub use shards::{ClusterMap, Shards};
pub use subscriber::{Subscriber, SubscriberSink};

/// Where the worker's Redis connections go: the parsed URL and the
/// addresses nginx resolved for it at configuration time (as for
/// `proxy_pass`): the server, or with Sentinel the Sentinels.
pub struct RedisTarget {
    pub url: RedisUrl,
    pub peers: Vec<Peer>,
}

/// One address a connection can go to, owned (a master's address arrives
/// at run time, from Sentinel).
#[derive(Clone)]
pub struct Peer {
    addr: libc::sockaddr_storage,
    socklen: libc::socklen_t,
    /// `host:port`, for log lines and nginx's connect code.
    name: Vec<u8>,
}

impl PartialEq for Peer {
    fn eq(&self, other: &Peer) -> bool {
        self.name == other.name
    }
}

impl Peer {
    /// A copy of an address nginx resolved.
    ///
    /// # Safety
    /// `sockaddr` must point to `socklen` readable bytes of a socket address.
    pub unsafe fn from_raw(sockaddr: *const ngx::ffi::sockaddr, socklen: u32, name: &[u8]) -> Peer {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = (socklen as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: the caller's contract for the source; `addr` is at least
        // `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sockaddr as *const u8,
                &mut addr as *mut libc::sockaddr_storage as *mut u8,
                len,
            )
        };
        Peer {
            addr,
            socklen: len as libc::socklen_t,
            name: name.to_vec(),
        }
    }

    /// An IP address and port as Sentinel reports them (`10.0.0.2`,
    /// `6379`); `None` for a host name (not resolved at run time) or junk.
    pub fn from_ip(ip: &[u8], port: &[u8]) -> Option<Peer> {
        let ip: std::net::IpAddr = std::str::from_utf8(ip).ok()?.parse().ok()?;
        let port: u16 = std::str::from_utf8(port).ok()?.parse().ok()?;
        let addr = std::net::SocketAddr::new(ip, port);
        // SAFETY: all-zero is a valid sockaddr_storage, and each arm writes
        // the variant its family says, within its size.
        let (storage, socklen) = unsafe {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let socklen = match addr {
                std::net::SocketAddr::V4(a) => {
                    let sin = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in);
                    sin.sin_family = libc::AF_INET as libc::sa_family_t;
                    sin.sin_port = a.port().to_be();
                    sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                    std::mem::size_of::<libc::sockaddr_in>()
                }
                std::net::SocketAddr::V6(a) => {
                    let sin6 = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6);
                    sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    sin6.sin6_port = a.port().to_be();
                    sin6.sin6_addr.s6_addr = a.ip().octets();
                    std::mem::size_of::<libc::sockaddr_in6>()
                }
            };
            (storage, socklen as libc::socklen_t)
        };
        Some(Peer {
            addr: storage,
            socklen,
            name: addr.to_string().into_bytes(),
        })
    }

    pub fn name(&self) -> &[u8] {
        &self.name
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Subscriber = 1,
    Commands = 2,
    /// The Sentinel watch (`redis-sentinel://` URLs).
    Sentinel = 3,
}

/// Which connection of the worker: its role, and for the sharded
/// subscribers of a Redis Cluster, which one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub role: Role,
    /// 0: the worker's main connection of that role; `i > 0`: the sharded
    /// subscriber of cluster shard `i - 1`.
    pub shard: usize,
}

impl Link {
    pub fn main(role: Role) -> Link {
        Link { role, shard: 0 }
    }

    /// Links travel in `c->data` and timer `ev->data` as a number (no
    /// pointer: the worker finds the connection from it).
    fn tag(self) -> *mut c_void {
        ((self.shard << 4) | self.role as usize) as *mut c_void
    }

    fn from_tag(tag: *mut c_void) -> Option<Link> {
        let tag = tag as usize;
        let role = match tag & 0xf {
            1 => Role::Subscriber,
            2 => Role::Commands,
            3 => Role::Sentinel,
            _ => return None,
        };
        Some(Link {
            role,
            shard: tag >> 4,
        })
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
pub type EventHook = fn(Link, RedisEvent, *mut ngx_event_t);

thread_local! {
    static EVENT_HOOK: Cell<EventHook> = const { Cell::new(|_, _, _| {}) };
}

/// Installs where the Redis connections' events go (the worker).
pub fn set_event_hook(hook: EventHook) {
    EVENT_HOOK.with(|h| h.set(hook));
}

fn emit(link: Link, event: RedisEvent, ev: *mut ngx_event_t) {
    let hook = EVENT_HOOK.with(Cell::get);
    hook(link, event, ev);
}

/// The link of a connection event's connection.
///
/// # Safety
/// `ev` must be an event of a live connection.
unsafe fn connection_role(ev: *mut ngx_event_t) -> Option<Link> {
    // SAFETY: connection events carry their connection in `data`, and our
    // connections carry their link tag.
    unsafe { Link::from_tag((*((*ev).data as *mut ngx_connection_t)).data) }
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
    // SAFETY: our timers' `data` is their connection's TimerIdent.
    if let Some(role) = Link::from_tag(unsafe { crate::ngx_ext::timer_tag((*ev).data) }) {
        emit(role, RedisEvent::Reconnect, ev);
    }
}

unsafe extern "C" fn ping_handler(ev: *mut ngx_event_t) {
    // SAFETY: our timers' `data` is their connection's TimerIdent.
    if let Some(role) = Link::from_tag(unsafe { crate::ngx_ext::timer_tag((*ev).data) }) {
        emit(role, RedisEvent::Ping, ev);
    }
}
