//! The state of one nginx worker: its fan-out registry, its Redis
//! connections, and the hooks that start and stop them with the process.
//!
//! Everything here runs on the worker's one thread, inside nginx's event
//! loop; there are no helper threads and no locks. The state lives in a
//! thread-local `RefCell`, and the rule that keeps it sound is: *never call
//! into nginx request code while the state is borrowed*. Code that may end a
//! stream (flushing, finishing) runs after the borrow is released, because
//! ending a stream re-enters [`unregister`]. Likewise a Redis event handler
//! only records what it wants done to the other connection ([`Effects`]),
//! and the worker does it once the handler has returned.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem;
use std::ptr;
use std::rc::Rc;

use ngx::ffi::{
    ngx_close_connection, ngx_connection_t, ngx_cycle_t, ngx_event_t, ngx_get_connection,
    ngx_http_run_posted_requests, ngx_int_t, NGX_ERROR, NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_WARN,
    NGX_OK,
};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;
use sse_core::channel;
use sse_core::envelope::{self, Control, CONTROL_CHANNEL};
use sse_core::frame;
use sse_core::registry::Registry;
use sse_core::resp::Value;

use crate::history::Phase;
use crate::ngx_ext::cycle_log;
use crate::redis::{RedisBridge, RedisEvent, Request, RequestKind, Role, Sink};
use crate::stream::{Frame, Stream, StreamKey, REFUSED_EVENT};
use crate::SseModule;

/// The `sse_publish` function library, loaded by the commands connection.
const PUBLISH_FUNCTION: &str = include_str!("../redis/sse.lua");

/// What the scratch buffer keeps between batches.
const SCRATCH_KEEP: usize = 64 * 1024;

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

struct Worker {
    registry: Registry<StreamKey>,
    /// Every open stream by id (replies from Redis find streams this way).
    streams: HashMap<u64, StreamKey>,
    next_stream_id: u64,
    subscriber: Box<RedisBridge>,
    /// The history connection, if some location keeps history.
    commands: Option<Box<RedisBridge>>,
    /// `sse_redis_prefix`.
    prefix: String,
    /// `sse_max_message_size`: larger messages are skipped.
    max_message: usize,
    /// The last barrier token sent on the subscriber connection.
    barrier_token: u64,
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

pub fn next_stream_id() -> u64 {
    with(|w| {
        w.next_stream_id += 1;
        w.next_stream_id
    })
    .unwrap_or(0)
}

/// Adds a stream to the registry; subscribes what is new to this worker.
pub fn register(key: StreamKey, subscriptions: &[Box<[u8]>]) {
    with(|w| {
        // SAFETY: `key` is the live stream being opened.
        let id = unsafe { (*key.as_ptr()).id };
        w.streams.insert(id, key);
        let new = w.registry.subscribe(key, subscriptions);
        if !new.is_empty() {
            w.subscriber.subscribe(&new);
        }
    });
}

/// Removes a stream; unsubscribes what nobody here wants any more.
pub fn unregister(key: StreamKey, subscriptions: &[Box<[u8]>]) {
    with(|w| {
        // SAFETY: called for a live stream, before it is freed.
        let id = unsafe { (*key.as_ptr()).id };
        w.streams.remove(&id);
        let gone = w.registry.unsubscribe(key, subscriptions);
        if !gone.is_empty() && !w.exiting {
            w.subscriber.unsubscribe(&gone);
        }
        // A stream is only dirty within one Redis batch, but never leave a
        // dangling key behind, whatever the path that ended it.
        if let Some(i) = w.dirty.iter().position(|k| *k == key) {
            w.dirty.swap_remove(i);
        }
    });
}

/// A new history stream: once Redis confirms its subscriptions (barrier),
/// its history is read.
pub fn start_history(key: StreamKey) {
    with(|w| {
        let token = w.barrier_token + 1;
        // SAFETY: `key` is the live stream being opened.
        if let Some(h) = unsafe { (*key.as_ptr()).history.as_mut() } {
            h.restart(token);
        }
        if w.subscriber.barrier(token) {
            w.barrier_token = token;
        }
        // Otherwise the subscriber is reconnecting: its `resubscribed`
        // restarts every history stream with a fresh barrier.
    });
}

/// What a Redis event handler asks the worker to do afterwards.
#[derive(Default)]
struct Effects {
    /// Send a barrier (the token is `barrier_token + 1`).
    barrier: bool,
    /// Streams whose history reads should go out now.
    fetch: Vec<u64>,
    /// Streams to end cleanly (revocation).
    revoked: Vec<StreamKey>,
    /// Streams to end because Redis refused one of their subscriptions,
    /// with the `sse-refused` event that tells them which.
    refused: Vec<(StreamKey, Frame)>,
}

/// The worker as the Redis bridges see it while they handle an event.
struct WorkerSink<'a> {
    registry: &'a Registry<StreamKey>,
    streams: &'a HashMap<u64, StreamKey>,
    dirty: &'a mut Vec<StreamKey>,
    scratch: &'a mut Vec<u8>,
    next_token: u64,
    effects: &'a mut Effects,
    /// `sse_redis_prefix`: events whose id another prefix issued are not ours.
    prefix: &'a [u8],
    /// `sse_max_message_size`.
    max_message: usize,
}

impl WorkerSink<'_> {
    fn mark_dirty(&mut self, key: StreamKey) {
        // SAFETY: registered streams are live; no nginx code runs here.
        let s = unsafe { &mut *key.as_ptr() };
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(key);
        }
    }

    fn history_streams(&self) -> impl Iterator<Item = (u64, StreamKey)> + '_ {
        self.streams
            .iter()
            .map(|(&id, &key)| (id, key))
            .filter(|(_, key)| {
                // SAFETY: registered streams are live.
                unsafe { (*key.as_ptr()).history.is_some() }
            })
    }

    fn control(&mut self, payload: &[u8]) {
        match envelope::parse_control(payload) {
            Ok(Control::Revoke(users)) => {
                for &key in self.streams.values() {
                    // SAFETY: registered streams are live.
                    let user = unsafe { (*key.as_ptr()).user() };
                    if user.is_some_and(|u| users.contains(&u)) {
                        self.effects.revoked.push(key);
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

impl Sink for WorkerSink<'_> {
    fn message(&mut self, subscription: &[u8], channel: &[u8], payload: &[u8]) {
        if channel::is_reserved(channel) {
            // The module's own channels never reach clients. A client's
            // pattern glob (`*:*`) can match them too: only the worker's
            // own subscription counts, so each control message acts once.
            if subscription == CONTROL_CHANNEL.as_bytes() {
                self.control(payload);
            }
            return;
        }
        let subscribers = self.registry.subscribers(subscription);
        if subscribers.is_empty() {
            // Unsubscribed a moment ago; Redis had already sent it.
            return;
        }
        if payload.len() > self.max_message {
            ngx_log_error!(
                NGX_LOG_WARN,
                cycle_log(),
                "sse: skipped a message of {} bytes on \"{}\": larger than sse_max_message_size {}",
                payload.len(),
                String::from_utf8_lossy(channel).escape_debug(),
                self.max_message
            );
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
        if !envelope.belongs_to(self.prefix) {
            // Published with history under another sse_redis_prefix: its id
            // is a position in another application's sequence.
            return;
        }
        // Formatted once, on first use, and shared by every recipient.
        let mut frame: Option<Rc<[u8]>> = None;
        for &key in subscribers {
            // SAFETY: registered streams are live; no nginx code runs here.
            let s = unsafe { &mut *key.as_ptr() };
            if !s.admits(subscription, channel, &envelope) {
                continue;
            }
            let frame = frame.get_or_insert_with(|| {
                self.scratch.clear();
                let id = envelope.id.map(|id| id.to_string());
                frame::encode_event(
                    self.scratch,
                    Some(channel),
                    id.as_deref().map(str::as_bytes),
                    envelope.body,
                );
                Rc::from(&self.scratch[..])
            });
            s.deliver(envelope.id, Frame::Shared(frame.clone()));
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    fn refused(&mut self, key: &[u8], reason: &[u8]) {
        let subscribers = self.registry.subscribers(key);
        ngx_log_error!(
            NGX_LOG_ERR,
            cycle_log(),
            "sse: redis refused to subscribe to \"{}\" (\"{}\"); ending the {} stream(s) that asked for it",
            String::from_utf8_lossy(key).escape_debug(),
            String::from_utf8_lossy(reason).escape_debug(),
            subscribers.len()
        );
        for &stream in subscribers {
            // SAFETY: registered streams are live; no nginx code runs here.
            let s = unsafe { &*stream.as_ptr() };
            if let Some(name) = s.subscription_for_key(key) {
                self.scratch.clear();
                frame::encode_event(self.scratch, Some(REFUSED_EVENT), None, name);
                let event = Frame::Shared(Rc::from(&self.scratch[..]));
                self.effects.refused.push((stream, event));
            }
        }
    }

    fn keys(&self) -> Vec<Vec<u8>> {
        self.registry.keys().map(<[u8]>::to_vec).collect()
    }

    fn resubscribed(&mut self) {
        // Whatever was published while the subscription was down is read
        // back from the history, after a barrier.
        let token = self.next_token;
        let mut any = false;
        for (_, key) in self.history_streams().collect::<Vec<_>>() {
            // SAFETY: registered streams are live.
            if let Some(h) = unsafe { (*key.as_ptr()).history.as_mut() } {
                h.restart(token);
                any = true;
            }
        }
        self.effects.barrier |= any;
    }

    fn barrier(&mut self, token: u64) {
        for (id, key) in self.history_streams().collect::<Vec<_>>() {
            // SAFETY: registered streams are live.
            if let Some(h) = unsafe { (*key.as_ptr()).history.as_mut() } {
                if matches!(h.phase, Phase::AwaitingBarrier(t) if t <= token) {
                    h.phase = Phase::Queued;
                    self.effects.fetch.push(id);
                }
            }
        }
    }

    fn commands_ready(&mut self) {
        for (id, key) in self.history_streams().collect::<Vec<_>>() {
            // SAFETY: registered streams are live.
            if unsafe { (*key.as_ptr()).history.as_ref() }.is_some_and(|h| h.phase == Phase::Queued)
            {
                self.effects.fetch.push(id);
            }
        }
    }

    fn reply(&mut self, request: Request, value: &Value<'_>) {
        let Some(&key) = self.streams.get(&request.stream) else {
            return; // the stream ended meanwhile
        };
        // SAFETY: registered streams are live.
        let s = unsafe { &mut *key.as_ptr() };
        let Some(h) = s.history.as_mut() else {
            return;
        };
        if h.generation != request.generation || h.phase != Phase::Fetching {
            return; // a reply to an abandoned read
        }
        let (done, problem) = h.reply(request.kind, value);
        if let Some(problem) = problem {
            ngx_log_error!(
                NGX_LOG_WARN,
                cycle_log(),
                "sse: history read failed: {}",
                problem
            );
        }
        if done {
            s.finish_replay(self.scratch, self.max_message);
            self.mark_dirty(key);
        }
    }

    fn commands_lost(&mut self, requests: Vec<Request>) {
        for request in requests {
            if let Some(&key) = self.streams.get(&request.stream) {
                // SAFETY: registered streams are live.
                if let Some(h) = unsafe { (*key.as_ptr()).history.as_mut() } {
                    if h.phase == Phase::Fetching && h.generation == request.generation {
                        h.requeue();
                    }
                }
            }
        }
    }
}

/// Entry point of every Redis event handler.
pub fn on_redis_event(role: Role, event: RedisEvent, ev: *mut ngx_event_t) {
    let Some((batch, revoked, refused)) = with(|w| {
        let mut effects = Effects::default();
        {
            let Worker {
                registry,
                streams,
                subscriber,
                commands,
                dirty,
                scratch,
                barrier_token,
                prefix,
                max_message,
                ..
            } = &mut *w;
            let mut sink = WorkerSink {
                registry,
                streams,
                dirty,
                scratch,
                next_token: *barrier_token + 1,
                effects: &mut effects,
                prefix: prefix.as_bytes(),
                max_message: *max_message,
            };
            let bridge = match role {
                Role::Subscriber => Some(subscriber),
                Role::Commands => commands.as_mut(),
            };
            if let Some(bridge) = bridge {
                bridge.handle(event, ev, &mut sink);
            }
        }
        w.apply(&mut effects);
        w.shrink_scratch();
        (
            mem::take(&mut w.dirty),
            mem::take(&mut effects.revoked),
            mem::take(&mut effects.refused),
        )
    }) else {
        return;
    };
    flush_all(batch);
    for (key, event) in refused {
        // SAFETY: the streams were registered (live) when listed; ending one
        // frees at most that one, and a stream is listed once per key.
        unsafe { Stream::end_with(key, event) };
    }
    if !revoked.is_empty() {
        let mut users: Vec<String> = revoked
            .iter()
            // SAFETY: the revoked streams are still registered (live).
            .filter_map(|k| {
                unsafe { (*k.as_ptr()).user() }.map(|u| String::from_utf8_lossy(u).into_owned())
            })
            .collect();
        users.sort();
        users.dedup();
        ngx_log_error!(
            NGX_LOG_INFO,
            cycle_log(),
            "sse: revocation: ending {} stream(s) of user(s) {}",
            revoked.len(),
            users.join(", ")
        );
        end_streams(revoked);
    }
}

impl Worker {
    /// Does what the handlers asked for (see [`Effects`]).
    fn apply(&mut self, effects: &mut Effects) {
        if effects.barrier && self.subscriber.barrier(self.barrier_token + 1) {
            self.barrier_token += 1;
        }
        let Some(commands) = self.commands.as_mut() else {
            return;
        };
        let mut sent = false;
        for id in effects.fetch.drain(..) {
            let Some(&key) = self.streams.get(&id) else {
                continue;
            };
            // SAFETY: registered streams are live.
            let Some(h) = (unsafe { (*key.as_ptr()).history.as_mut() }) else {
                continue;
            };
            if h.phase != Phase::Queued || !commands.is_ready() {
                continue; // sent when the commands connection is ready
            }
            let generation = h.generation;
            let reads = h.requests(&self.prefix);
            let request = Request {
                stream: id,
                generation,
                kind: RequestKind::Snapshot,
            };
            sent |= commands.transaction(request, &reads);
        }
        if sent {
            commands.send();
        }
        // A send that broke the connection hands its requests back.
        for request in mem::take(&mut commands.lost_requests) {
            if let Some(&key) = self.streams.get(&request.stream) {
                // SAFETY: registered streams are live.
                if let Some(h) = unsafe { (*key.as_ptr()).history.as_mut() } {
                    if h.generation == request.generation {
                        h.requeue();
                    }
                }
            }
        }
    }
}

/// Writes the frames queued in one batch, one output call per stream.
fn flush_all(mut batch: Vec<StreamKey>) {
    for &key in &batch {
        // SAFETY: keys in a batch are live: a stream leaves the batch when it
        // is unregistered, and only the stream being flushed can end here.
        unsafe {
            (*key.as_ptr()).dirty = false;
            let c = (*key.as_ptr()).request_connection();
            Stream::flush(key);
            if let Some(c) = c {
                ngx_http_run_posted_requests(c);
            }
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
    let Some(subscriber) = RedisBridge::new(target, Role::Subscriber, None) else {
        return NGX_ERROR as ngx_int_t;
    };
    let commands = if main.history_used {
        match RedisBridge::new(target, Role::Commands, Some(PUBLISH_FUNCTION)) {
            Some(commands) => Some(commands),
            None => return NGX_ERROR as ngx_int_t,
        }
    } else {
        None
    };
    let shutdown_watch = new_shutdown_watch(cycle);
    WORKER.with(|cell| {
        *cell.borrow_mut() = Some(Worker {
            registry: Registry::default(),
            streams: HashMap::new(),
            next_stream_id: 0,
            subscriber,
            commands,
            prefix: main.prefix().to_string(),
            max_message: main.max_message,
            barrier_token: 0,
            dirty: Vec::new(),
            scratch: Vec::with_capacity(SCRATCH_KEEP),
            shutdown_watch,
            exiting: false,
        })
    });
    on_redis_event(Role::Subscriber, RedisEvent::Start, ptr::null_mut());
    on_redis_event(Role::Commands, RedisEvent::Start, ptr::null_mut());
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
        w.close_redis();
        w.registry.all_subscribers()
    })
    .unwrap_or_default();
    end_streams(streams);
    close_shutdown_watch();
}

impl Worker {
    /// The scratch buffer grows to the largest message formatted; after a
    /// large one, give the memory back instead of holding it for good.
    fn shrink_scratch(&mut self) {
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::with_capacity(SCRATCH_KEEP);
        }
    }

    fn close_redis(&mut self) {
        self.subscriber.close();
        if let Some(commands) = self.commands.as_mut() {
            commands.close();
        }
    }
}

/// Ends streams with a complete response: their browsers reconnect.
fn end_streams(streams: Vec<StreamKey>) {
    for key in streams {
        // SAFETY: the streams were registered (live) when listed, and
        // finishing one frees at most that one.
        unsafe {
            let c = (*key.as_ptr()).request_connection();
            Stream::finish(key, true);
            if let Some(c) = c {
                ngx_http_run_posted_requests(c);
            }
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
    with(Worker::close_redis);
    close_shutdown_watch();
    WORKER.with(|cell| cell.borrow_mut().take());
}
