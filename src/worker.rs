//! The state of one nginx worker: its fan-out registry, its single Redis
//! connection, and the hooks that start and stop them with the process.
//!
//! Everything here runs on the worker's one thread, inside nginx's event
//! loop; there are no helper threads and no locks. The state lives in a
//! thread-local `RefCell`, and the rule that keeps it sound is: *never call
//! into nginx request code while the state is borrowed*. Code that may end a
//! stream (flushing, finishing) runs after the borrow is released, because
//! ending a stream re-enters [`unregister`].

use std::cell::RefCell;
use std::mem;
use std::ptr;

use ngx::ffi::{
    ngx_close_connection, ngx_connection_t, ngx_cycle_t, ngx_event_t, ngx_get_connection,
    ngx_http_run_posted_requests, ngx_int_t, NGX_ERROR, NGX_LOG_INFO, NGX_LOG_WARN, NGX_OK,
};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;
use std::rc::Rc;

use sse_core::channel;
use sse_core::envelope::{self, Control, CONTROL_CHANNEL};
use sse_core::frame;
use sse_core::registry::{self, Registry};

use crate::ngx_ext::cycle_log;
use crate::redis::{RedisBridge, RedisEvent, Subscriptions};
use crate::stream::{self, Frame, Stream, StreamKey};
use crate::SseModule;

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

struct Worker {
    registry: Registry<StreamKey>,
    redis: Box<RedisBridge>,
    /// Streams that received frames in the current batch, to flush once each.
    dirty: Vec<StreamKey>,
    /// Reused buffer in which each message is formatted once.
    scratch: Vec<u8>,
    /// An idle pseudo-connection whose only purpose is to be closed by
    /// nginx's ngx_close_idle_connections() when a graceful shutdown begins
    /// (reload or quit): that is our cue to end every stream cleanly.
    shutdown_watch: *mut ngx_connection_t,
    exiting: bool,
}

fn with<R>(f: impl FnOnce(&mut Worker) -> R) -> Option<R> {
    WORKER.with(|cell| cell.borrow_mut().as_mut().map(f))
}

/// Whether new streams may open (the worker is set up and not exiting).
pub fn accepting() -> bool {
    with(|w| !w.exiting).unwrap_or(false)
}

/// Adds a stream to the registry; subscribes what is new to this worker.
pub fn register(key: StreamKey, subscriptions: &[Box<[u8]>]) {
    with(|w| {
        let new = w.registry.subscribe(key, subscriptions);
        if !new.is_empty() {
            w.redis.subscribe(&new);
        }
    });
}

/// Removes a stream; unsubscribes what nobody here wants any more.
pub fn unregister(key: StreamKey, subscriptions: &[Box<[u8]>]) {
    with(|w| {
        let gone = w.registry.unsubscribe(key, subscriptions);
        if !gone.is_empty() && !w.exiting {
            w.redis.unsubscribe(&gone);
        }
        // A stream is only dirty within one Redis batch, but never leave a
        // dangling key behind, whatever the path that ended it.
        if let Some(i) = w.dirty.iter().position(|k| *k == key) {
            w.dirty.swap_remove(i);
        }
    });
}

/// The registry seen by the Redis bridge: where messages go and what to
/// resubscribe after a reconnect.
struct FanOut<'a> {
    registry: &'a Registry<StreamKey>,
    dirty: &'a mut Vec<StreamKey>,
    scratch: &'a mut Vec<u8>,
    /// Streams to end once the worker state is released (revocations).
    revoked: &'a mut Vec<StreamKey>,
}

impl Subscriptions for FanOut<'_> {
    fn message(&mut self, subscription: &[u8], channel: &[u8], payload: &[u8]) {
        if channel::is_reserved(channel) {
            // The module's own channels never reach clients.
            if channel == CONTROL_CHANNEL.as_bytes() {
                self.control(payload);
            }
            return;
        }
        let subscribers = self.registry.subscribers(subscription);
        if subscribers.is_empty() {
            // Unsubscribed a moment ago; Redis had already sent it.
            return;
        }
        let envelope = match envelope::parse(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    cycle_log(),
                    "sse: skipped a message on \"{}\": {}",
                    String::from_utf8_lossy(channel).escape_debug(),
                    e
                );
                return;
            }
        };
        let via_pattern = registry::is_pattern_key(subscription);
        // Formatted once, on first use, and shared by every recipient.
        let mut frame: Option<Rc<[u8]>> = None;
        for &key in subscribers {
            // SAFETY: registered streams are live; no nginx code runs here.
            let s = unsafe { &mut *key.as_ptr() };
            if !s.admits(via_pattern, channel, &envelope) {
                continue;
            }
            let frame = frame.get_or_insert_with(|| {
                self.scratch.clear();
                frame::encode_event(self.scratch, Some(channel), None, envelope.body);
                Rc::from(&self.scratch[..])
            });
            s.enqueue(Frame::Shared(frame.clone()));
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    fn keys(&self) -> Vec<Vec<u8>> {
        self.registry.keys().map(<[u8]>::to_vec).collect()
    }
}

impl FanOut<'_> {
    fn control(&mut self, payload: &[u8]) {
        match envelope::parse_control(payload) {
            Ok(Control::Revoke(users)) => {
                for key in self.registry.all_subscribers() {
                    // SAFETY: registered streams are live.
                    let user = unsafe { (*key.as_ptr()).user() };
                    if user.is_some_and(|u| users.contains(&u)) && !self.revoked.contains(&key) {
                        self.revoked.push(key);
                    }
                }
            }
            Err(e) => {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    cycle_log(),
                    "sse: skipped a control message: {}",
                    e
                );
            }
        }
    }
}

/// Entry point of every Redis event handler.
pub fn on_redis_event(event: RedisEvent, ev: *mut ngx_event_t) {
    let Some((batch, revoked)) = with(|w| {
        let Worker {
            registry,
            redis,
            dirty,
            scratch,
            ..
        } = w;
        let mut revoked = Vec::new();
        let mut fan_out = FanOut {
            registry,
            dirty,
            scratch,
            revoked: &mut revoked,
        };
        redis.handle(event, ev, &mut fan_out);
        (mem::take(dirty), revoked)
    }) else {
        return;
    };
    flush_all(batch);
    if !revoked.is_empty() {
        ngx_log_error!(
            NGX_LOG_INFO,
            cycle_log(),
            "sse: revocation: ending {} stream(s)",
            revoked.len()
        );
        end_streams(revoked);
    }
}

/// Writes the frames queued in one batch, one output call per stream.
fn flush_all(mut batch: Vec<StreamKey>) {
    for &key in &batch {
        // SAFETY: keys in a batch are live: a stream leaves the batch when it
        // is unregistered, and only the stream being flushed can end here.
        unsafe {
            (*key.as_ptr()).dirty = false;
            let c = stream::connection_of(key);
            Stream::flush(key);
            ngx_http_run_posted_requests(c);
        }
    }
    batch.clear();
    // Give the allocation back for the next batch.
    with(|w| {
        if w.dirty.is_empty() {
            w.dirty = batch;
        }
    });
}

/// `init_process`: set up the worker's state and start connecting to Redis.
pub unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx calls init_process in the worker with its cycle.
    let cycle = unsafe { &*cycle };
    let Some(main) = SseModule::main_conf(cycle) else {
        return NGX_OK as ngx_int_t;
    };
    let Some(target) = main.redis.as_ref().filter(|_| main.used) else {
        // No sse_channel anywhere: no Redis connection either.
        return NGX_OK as ngx_int_t;
    };
    let Some(redis) = RedisBridge::new(target) else {
        return NGX_ERROR as ngx_int_t;
    };
    let shutdown_watch = new_shutdown_watch(cycle);
    WORKER.with(|cell| {
        *cell.borrow_mut() = Some(Worker {
            registry: Registry::default(),
            redis,
            dirty: Vec::new(),
            scratch: Vec::with_capacity(4096),
            shutdown_watch,
            exiting: false,
        })
    });
    on_redis_event(RedisEvent::Start, ptr::null_mut());
    NGX_OK as ngx_int_t
}

fn new_shutdown_watch(cycle: &ngx_cycle_t) -> *mut ngx_connection_t {
    // SAFETY: plain syscall; the descriptor is owned by the connection below
    // and closed with it.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        ngx_log_error!(
            NGX_LOG_WARN,
            cycle.log,
            "sse: eventfd() failed; streams will not end cleanly at reload"
        );
        return ptr::null_mut();
    }
    // SAFETY: worker thread, valid descriptor. The connection is never added
    // to the event loop: nginx only calls its read handler, with `close` set,
    // from ngx_close_idle_connections().
    unsafe {
        let c = ngx_get_connection(fd, cycle.log);
        if c.is_null() {
            libc::close(fd);
            return ptr::null_mut();
        }
        (*(*c).read).handler = Some(shutdown_handler);
        (*c).set_idle(1);
        c
    }
}

/// Graceful shutdown has begun: stop taking messages and end every stream
/// with a complete response, so browsers reconnect at once (to a new worker).
unsafe extern "C" fn shutdown_handler(_ev: *mut ngx_event_t) {
    let streams = with(|w| {
        w.exiting = true;
        w.redis.close();
        w.registry.all_subscribers()
    })
    .unwrap_or_default();
    end_streams(streams);
    close_shutdown_watch();
}

/// Ends streams with a complete response: their browsers reconnect.
fn end_streams(streams: Vec<StreamKey>) {
    for key in streams {
        // SAFETY: the streams were registered (live) when listed, and
        // finishing one frees at most that one.
        unsafe {
            let c = stream::connection_of(key);
            Stream::finish(key, true);
            ngx_http_run_posted_requests(c);
        }
    }
}

fn close_shutdown_watch() {
    let c =
        with(|w| mem::replace(&mut w.shutdown_watch, ptr::null_mut())).unwrap_or(ptr::null_mut());
    if !c.is_null() {
        // SAFETY: the connection was obtained from ngx_get_connection and is
        // closed exactly once (the pointer was cleared above).
        unsafe { ngx_close_connection(c) };
    }
}

/// `exit_process`: release what is left (after a graceful shutdown nothing
/// is; after `nginx -s stop` nginx drops the streams itself).
pub unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    with(|w| w.redis.close());
    close_shutdown_watch();
    WORKER.with(|cell| cell.borrow_mut().take());
}
