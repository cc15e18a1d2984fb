//! The state of one nginx worker: its fan-out registry, its streams, its
//! Redis connections, and the hooks that start and stop them with the
//! process.
//!
//! Everything here runs on the worker's one thread, inside nginx's event
//! loop; there are no helper threads and no locks. The state lives in a
//! thread-local `RefCell`, and the rule that keeps it sound is: *never call
//! into nginx request code while the state is borrowed*. Code that may end a
//! stream (flushing, finishing) runs after the borrow is released, because
//! ending a stream re-enters [`unregister`]. Likewise a Redis event handler
//! only records what it wants done ([`Effects`]), and the worker does it
//! once the handler has returned.
//!
//! Dependencies point down: the content handler registers streams here;
//! the worker drives streams and Redis connections; those two call back
//! only through the hooks installed in [`init_process`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem;
use std::ptr;

use std::ffi::c_void;

use ngx::ffi::{
    ngx_add_timer, ngx_close_connection, ngx_connection_t, ngx_cycle_t, ngx_del_timer, ngx_event_t,
    ngx_get_connection, ngx_http_cleanup_add, ngx_http_request_t, ngx_http_run_posted_requests,
    ngx_int_t, ngx_msec_t, NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_NOTICE, NGX_LOG_WARN, NGX_OK,
};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;
use sse_core::frame as wire;
use sse_core::history::Resume;
use sse_core::metrics::{CloseReason, Gauge};
use sse_core::pattern::Pattern;
use sse_core::registry::Registry;
use sse_core::session::{self, Answer, Change, ChangeError, CHANNELS_EVENT};

use crate::fanout::{Effects, Fanout, Scope};
use crate::frame::Frame;
use crate::metrics;
use crate::ngx_ext::{cycle_log, random_bytes, timer_tag, TimerIdent};
use crate::redis::connection::auth_args;
use crate::redis::{
    self, Commands, Connection, Link, Peer, RedisEvent, Request, Role, SentinelSink, SentinelWatch,
    Shards, Subscriber,
};
use crate::replay::Phase;
use crate::stream::{self, Stream, StreamKey};
use crate::SseModule;
use sse_core::lanes::LanePhase;

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
    subscriber: Box<Connection<Subscriber>>,
    /// The history connection, if some location keeps history.
    commands: Option<Box<Connection<Commands>>>,
    /// The Sentinel watch (`redis-sentinel://`), and the master it named.
    sentinel: Option<Box<Connection<SentinelWatch>>>,
    master: Option<Peer>,
    /// Redis Cluster (`redis-cluster://`): the sharded subscribers, and
    /// the timer that reads the topology again.
    shards: Option<Shards>,
    topology_timer: Option<Box<ngx_event_t>>,
    /// What the topology timer's `data` points to (kept alive here; only
    /// nginx reads it, through the timer).
    _topology_ident: TimerIdent,
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
    /// This worker's id in session tokens: random per process, so that it
    /// is unique across the workers of every nginx on the same Redis.
    node: u64,
    /// Its reserved channel (`sse:node:<node>`), subscribed if some
    /// location uses live changes.
    node_channel: Vec<u8>,
    /// Change requests forwarded to another worker, waiting for its answer.
    waiting: HashMap<u64, Box<Waiting>>,
    next_change: u64,
    /// An idle pseudo-connection whose only purpose is to be closed by
    /// nginx's ngx_close_idle_connections() when a graceful shutdown begins
    /// (reload or quit): that is our cue to end every stream cleanly.
    shutdown_watch: *mut ngx_connection_t,
    exiting: bool,
}

/// Answers a change request (status and body) and finalizes it; given by
/// the `sse_subscribe` handler, which owns the response format.
pub type Finish = unsafe fn(*mut ngx_http_request_t, u16, &[u8]);

/// A change request held until the worker that owns its stream answers.
struct Waiting {
    r: *mut ngx_http_request_t,
    finish: Finish,
    /// `sse_subscribe_timeout`.
    timer: ngx_event_t,
    /// What the timer's `data` points to (it carries the request number).
    ident: TimerIdent,
}

/// What became of a change request.
pub enum ChangeOutcome {
    /// Answered now: status and body.
    Done(u16, Vec<u8>),
    /// Forwarded: the worker answers it with its `Finish` later.
    Waiting,
}

fn with<R>(f: impl FnOnce(&mut Worker) -> R) -> Option<R> {
    WORKER.with(|cell| cell.borrow_mut().as_mut().map(f))
}

/// A registered stream (registered streams are live).
fn stream_mut<'s>(key: StreamKey) -> &'s mut Stream {
    // SAFETY: the worker only holds keys of registered streams, which are
    // unregistered before they are freed.
    unsafe { &mut *key.as_ptr() }
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

/// This worker's node id (session tokens name it).
pub fn node() -> Option<u64> {
    with(|w| w.node)
}

/// A change request, from the `sse_subscribe` handler: applied here if this
/// worker holds the stream, otherwise published on the owner's node
/// channel; then `r` waits (without blocking the worker) for the owner's
/// answer, for at most `timeout`, and is answered through `finish`.
///
/// # Safety
/// `r` must be a live request that nothing else finalizes until `finish`
/// is called with it (or its cleanup runs).
pub unsafe fn change(
    mut change: Change,
    r: *mut ngx_http_request_t,
    timeout: ngx_msec_t,
    finish: Finish,
) -> ChangeOutcome {
    let outcome = with(|w| {
        if w.exiting {
            return ChangeOutcome::Done(503, b"sse: server is shutting down\n".to_vec());
        }
        if change.session.node == w.node {
            let (status, body) = w.apply_change(&change);
            return ChangeOutcome::Done(status, body);
        }
        // The answer comes on this worker's node channel: forward only once
        // the subscriber listens there (after Redis came back, the commands
        // connection may be up first).
        let Some(commands) = w
            .commands
            .as_mut()
            .filter(|c| c.is_ready() && w.subscriber.is_ready())
        else {
            return ChangeOutcome::Done(503, b"sse: redis is unavailable\n".to_vec());
        };
        w.next_change += 1;
        change.from = w.node;
        change.request = w.next_change;
        let channel = session::node_channel(change.session.node);
        commands.publish(channel.as_bytes(), &change.encode(), Some(change.request));
        commands.send();
        // SAFETY: `r` is live (caller's contract).
        let cln = unsafe { ngx_http_cleanup_add(r, 0) };
        if cln.is_null() {
            return ChangeOutcome::Done(500, b"sse: out of memory\n".to_vec());
        }
        // SAFETY: all-zero is the initial state of an nginx event.
        let timer = unsafe { std::mem::zeroed() };
        let id = change.request;
        // Boxed: nginx's timer tree holds the event's address.
        let mut waiting = Box::new(Waiting {
            r,
            finish,
            timer,
            ident: TimerIdent::new(id as usize as *mut c_void),
        });
        waiting.timer.handler = Some(change_timeout);
        waiting.timer.data = waiting.ident.as_data();
        // SAFETY: `r` and its connection are live; the cleanup runs when
        // nginx frees the request, and drops the waiting entry (and its
        // timer) if it is still there.
        unsafe {
            waiting.timer.log = (*(*r).connection).log;
            ngx_add_timer(&mut waiting.timer, timeout);
            (*cln).handler = Some(change_cleanup);
            (*cln).data = id as usize as *mut c_void;
        }
        sse_debug!(
            cycle_log(),
            "sse: change {} for stream {} of node {:016x} forwarded",
            id,
            change.session.stream,
            change.session.node
        );
        w.waiting.insert(id, waiting);
        ChangeOutcome::Waiting
    })
    .unwrap_or_else(|| ChangeOutcome::Done(503, b"sse: not ready\n".to_vec()));
    // A change applied here queued an sse-channels event.
    let dirty = with(|w| mem::take(&mut w.dirty)).unwrap_or_default();
    flush_all(dirty);
    outcome
}

/// `sse_subscribe_timeout` passed without an answer.
unsafe extern "C" fn change_timeout(ev: *mut ngx_event_t) {
    // SAFETY: the timer of a waiting entry carries its id in its ident.
    let id = unsafe { timer_tag((*ev).data) } as usize as u64;
    if let Some(waiting) = with(|w| w.waiting.remove(&id)).flatten() {
        let body = b"sse: the stream did not answer\n";
        // SAFETY: a waiting request is live until answered or cleaned up.
        unsafe { answer(waiting, 504, body) };
    }
}

/// The waiting request is being freed (client gone, worker exiting).
unsafe extern "C" fn change_cleanup(data: *mut c_void) {
    let id = data as usize as u64;
    if let Some(mut waiting) = with(|w| w.waiting.remove(&id)).flatten() {
        if waiting.timer.timer_set() != 0 {
            // SAFETY: the entry's own timer.
            unsafe { ngx_del_timer(&mut waiting.timer) };
        }
    }
}

/// Answers a waiting request (removed from the map) and runs what
/// finalizing posted.
///
/// # Safety
/// The request must be live.
// The entry stays boxed until its timer is deleted: nginx's timer tree
// holds the event's address.
#[allow(clippy::boxed_local)]
unsafe fn answer(mut waiting: Box<Waiting>, status: u16, body: &[u8]) {
    // SAFETY: the caller's contract; the timer is the entry's own.
    unsafe {
        if waiting.timer.timer_set() != 0 {
            ngx_del_timer(&mut waiting.timer);
        }
        let c = (*waiting.r).connection;
        (waiting.finish)(waiting.r, status, body);
        ngx_http_run_posted_requests(c);
    }
}

/// Adds a new stream to the fan-out, subscribes what is new to this worker,
/// and starts its replay (history streams).
pub fn register(key: StreamKey) {
    with(|w| {
        let s = stream_mut(key);
        w.streams.insert(s.id, key);
        let new = w.registry.subscribe(key, s.keys());
        if !new.is_empty() {
            w.subscribe_keys(&new);
            metrics::gauge_set(Gauge::RedisSubscriptions, w.registry.key_count() as i64);
        }
        w.lane_barriers(key, None);
        if let Some(replay) = s.replay.as_mut() {
            // Once Redis confirms the subscriptions (barrier), the history
            // is read. If the subscriber is not up, its coming up restarts
            // every replay with a fresh barrier.
            let token = w.barrier_token + 1;
            replay.restart(token);
            if w.subscriber.barrier(token) {
                w.barrier_token = token;
            }
        }
    });
}

/// The streams' end hook: removes a stream from the fan-out and
/// unsubscribes what nobody here wants any more.
fn unregister(key: StreamKey, id: u64, keys: &[Box<[u8]>]) {
    with(|w| {
        w.streams.remove(&id);
        let gone = w.registry.unsubscribe(key, keys);
        if !gone.is_empty() && !w.exiting {
            w.unsubscribe_keys(&gone);
        }
        if !gone.is_empty() {
            metrics::gauge_set(Gauge::RedisSubscriptions, w.registry.key_count() as i64);
        }
        // A stream is only dirty within one Redis batch, but never leave a
        // dangling key behind, whatever the path that ended it.
        if let Some(i) = w.dirty.iter().position(|k| *k == key) {
            w.dirty.swap_remove(i);
        }
    });
}

/// What the Sentinel watch reported while handling one event.
#[derive(Default)]
struct MasterReport(Option<(Vec<u8>, Vec<u8>)>);

impl SentinelSink for MasterReport {
    fn master(&mut self, ip: &[u8], port: &[u8]) {
        self.0 = Some((ip.to_vec(), port.to_vec()));
    }
}

/// The Sentinel watch's events: follow the master it names.
fn on_sentinel_event(event: RedisEvent, ev: *mut ngx_event_t) {
    with(|w| {
        let Some(sentinel) = w.sentinel.as_mut() else {
            return;
        };
        let mut report = MasterReport::default();
        sentinel.handle(event, ev, &mut report);
        if let Some((ip, port)) = report.0 {
            w.follow_master(&ip, &port);
        }
    });
}

/// The Redis connections' event hook.
fn on_redis_event(link: Link, event: RedisEvent, ev: *mut ngx_event_t) {
    if link.role == Role::Sentinel {
        return on_sentinel_event(event, ev);
    }
    let Some((batch, revoked, refused, answers)) = with(|w| {
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
                node_channel,
                shards,
                ..
            } = &mut *w;
            let (map, shard_conns, shard_commands) = match shards {
                Some(Shards {
                    map,
                    conns,
                    commands,
                    ..
                }) => (Some(&*map), Some(conns), Some(commands)),
                None => (None, None, None),
            };
            let scope = match (map, link.shard) {
                (Some(map), i) if i > 0 => Scope::Shard(map, i - 1),
                _ => Scope::All,
            };
            let mut fanout = Fanout {
                registry,
                streams,
                dirty,
                scratch,
                next_token: *barrier_token + 1,
                effects: &mut effects,
                prefix: prefix.as_bytes(),
                max_message: *max_message,
                node_channel,
                scope,
            };
            match (link.role, link.shard) {
                (Role::Subscriber, 0) => subscriber.handle(event, ev, &mut fanout),
                (Role::Subscriber, i) => {
                    let conn = shard_conns
                        .and_then(|c| c.get_mut(i - 1))
                        .and_then(Option::as_mut);
                    if let Some(conn) = conn {
                        conn.handle(event, ev, &mut fanout);
                        // A shard down: its master may be failing over.
                        fanout.effects.shard_down |= !conn.is_ready();
                    }
                }
                (Role::Commands, i) if i > 0 => {
                    let conn = shard_commands
                        .and_then(|c| c.get_mut(i - 1))
                        .and_then(Option::as_mut);
                    if let Some(conn) = conn {
                        conn.handle(event, ev, &mut fanout);
                        fanout.effects.shard_down |= !conn.is_ready();
                    }
                }
                (Role::Commands, _) => {
                    if let Some(commands) = commands.as_mut() {
                        commands.handle(event, ev, &mut fanout);
                    }
                }
                (Role::Sentinel, _) => {}
            }
        }
        if effects.reask_master {
            // (A watch that is reconnecting asks anyway.)
            if let Some(sentinel) = w.sentinel.as_mut().filter(|s| s.is_ready()) {
                sentinel.restart();
            }
        }
        w.apply(&mut effects);
        let answers = w.settle(&mut effects);
        w.shrink_scratch();
        metrics::gauge_set(Gauge::SubscriberPending, w.subscriber.in_flight() as i64);
        if let Some(commands) = &w.commands {
            metrics::gauge_set(Gauge::CommandsPending, commands.in_flight() as i64);
        }
        (
            mem::take(&mut w.dirty),
            mem::take(&mut effects.revoked),
            mem::take(&mut effects.refused),
            answers,
        )
    }) else {
        return;
    };
    flush_all(batch);
    for (waiting, status, body) in answers {
        // SAFETY: a waiting request is live until answered or cleaned up.
        unsafe { answer(waiting, status, &body) };
    }
    // Looked up again: flushing may have ended some, and a stream refused
    // and revoked at once is ended once.
    for (id, event) in refused {
        if let Some(key) = registered(id) {
            // SAFETY: a registered stream is live; ending it frees only it.
            unsafe { Stream::end_with(key, event, CloseReason::Refused) };
        }
    }
    if !revoked.is_empty() {
        log_revocation(&revoked);
    }
    // An id may be listed more than once (two revocations of one user in
    // one read): each is looked up just before it is ended.
    for id in revoked {
        if let Some(key) = registered(id) {
            // SAFETY: a registered stream is live; ending it frees only it.
            unsafe { stream::end_all(vec![key], CloseReason::Revoked) };
        }
    }
}

/// The stream with this id, if it is still registered.
fn registered(id: u64) -> Option<StreamKey> {
    with(|w| w.streams.get(&id).copied()).flatten()
}

fn log_revocation(revoked: &[u64]) {
    let mut ids = revoked.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut users: Vec<String> = ids
        .iter()
        .filter_map(|&id| registered(id))
        .filter_map(|k| {
            stream_mut(k)
                .user()
                .map(|u| String::from_utf8_lossy(u).into_owned())
        })
        .collect();
    users.sort();
    users.dedup();
    ngx_log_error!(
        NGX_LOG_INFO,
        cycle_log(),
        "sse: revocation: ending {} stream(s) of user(s) {}",
        ids.len(),
        users.join(", ")
    );
}

impl Worker {
    /// Does what the handlers asked for (see [`Effects`]).
    fn apply(&mut self, effects: &mut Effects) {
        if effects.barrier && self.subscriber.barrier(self.barrier_token + 1) {
            self.barrier_token += 1;
        }
        if effects.shard_down {
            self.hurry_topology();
        }
        self.apply_lanes(effects);
        let mut moved = Vec::new();
        if let Some(shards) = self.shards.as_mut() {
            let moved_now = !effects.moved.is_empty();
            for key in effects.moved.drain(..) {
                shards.moved(&key);
            }
            // A shard sent channels away: read the topology now (while it
            // stays unsettled, the topology timer reads it every 0.5 s).
            if moved_now {
                if let Some(commands) = self.commands.as_mut() {
                    commands.ask_topology();
                }
            }
            if let Some(topology) = effects.topology.take() {
                moved = shards.apply(topology, self.registry.keys());
            }
        }
        // History streams of moved channels read what the move may have
        // cost them, on the channel's new shard.
        for key in moved {
            let subscribers = self.registry.subscribers(&key).to_vec();
            for sub in subscribers {
                let lane = stream_mut(sub).lanes.as_ref().and_then(|l| l.find(&key));
                if let Some(lane) = lane {
                    self.lane_barriers(sub, Some(&[lane]));
                }
            }
        }
        for change in mem::take(&mut effects.changes) {
            let (status, body) = self.apply_change(&change);
            let answer = Answer {
                request: change.request,
                status,
                body,
            };
            if let Some(commands) = self.commands.as_mut() {
                let channel = session::node_channel(change.from);
                // Not up: the sender times out (504).
                if commands.publish(channel.as_bytes(), &answer.encode(), None) {
                    commands.send();
                }
            }
        }
        let Some(commands) = self.commands.as_mut() else {
            return;
        };
        let mut sent = false;
        for id in effects.fetch.drain(..) {
            let Some(&key) = self.streams.get(&id) else {
                continue;
            };
            let Some(replay) = stream_mut(key).replay.as_mut() else {
                continue;
            };
            if replay.phase != Phase::Queued || !commands.is_ready() {
                continue; // sent when the commands connection is ready
            }
            let request = Request {
                stream: id,
                generation: replay.generation,
                lane: None,
            };
            let reads = replay.requests(&self.prefix);
            sse_debug!(
                cycle_log(),
                "sse: stream {} reads its history ({} commands)",
                id,
                reads.len()
            );
            sent |= commands.transaction(request, &reads);
        }
        if sent {
            commands.send();
        }
        // A connection that broke hands its requests back: read again.
        for request in commands.take_lost() {
            if let Some(&key) = self.streams.get(&request.stream) {
                if let Some(replay) = stream_mut(key).replay.as_mut() {
                    if replay.generation == request.generation {
                        replay.requeue();
                    }
                }
            }
        }
    }

    /// Redis Cluster history: barriers on shards whose subscriber came
    /// back, reads of the lanes that are due, and reads to send again.
    fn apply_lanes(&mut self, effects: &mut Effects) {
        let Some(shards) = self.shards.as_mut() else {
            return;
        };
        let token = self.barrier_token + 1;
        let mut sent = false;
        for shard in effects.shard_barriers.drain(..) {
            sent |= shards.barrier(shard, token);
        }
        if sent {
            self.barrier_token = token;
        }
        let mut written = Vec::new();
        for (id, lane) in effects.fetch_lanes.drain(..) {
            let Some(&key) = self.streams.get(&id) else {
                continue;
            };
            let Some(lanes) = stream_mut(key).lanes.as_mut() else {
                continue;
            };
            let Some(l) = lanes.lanes().get(lane) else {
                continue;
            };
            if l.phase != LanePhase::Queued {
                continue;
            }
            let Some(shard) = shards.map.shard_for(&l.name) else {
                continue; // read when its shard comes up
            };
            let Some(commands) = shards.commands_mut(shard).filter(|c| c.is_ready()) else {
                continue; // read when the shard's connection is ready
            };
            let request = Request {
                stream: id,
                generation: l.generation,
                lane: Some(lane as u32),
            };
            let reads = lanes.requests(lane, &self.prefix);
            if commands.transaction(request, &reads) {
                written.push(shard);
            }
        }
        written.sort_unstable();
        written.dedup();
        for shard in written {
            if let Some(commands) = shards.commands_mut(shard) {
                commands.send();
            }
        }
        // Connections that broke hand their reads back: read again.
        for shard in 0..shards.commands.len() {
            let Some(commands) = shards.commands_mut(shard) else {
                continue;
            };
            for request in commands.take_lost() {
                let (Some(&key), Some(lane)) = (self.streams.get(&request.stream), request.lane)
                else {
                    continue;
                };
                if let Some(lanes) = stream_mut(key).lanes.as_mut() {
                    let lane = lane as usize;
                    if lanes.lanes().get(lane).map(|l| l.generation) == Some(request.generation) {
                        lanes.requeue(lane);
                    }
                }
            }
        }
    }

    /// Redis Cluster history: each lane of a stream (or only `which`)
    /// waits for a barrier on its shard, then reads its history.
    fn lane_barriers(&mut self, key: StreamKey, which: Option<&[usize]>) {
        let (Some(shards), Some(lanes)) = (self.shards.as_mut(), stream_mut(key).lanes.as_mut())
        else {
            return;
        };
        let all: Vec<usize> = (0..lanes.lanes().len()).collect();
        let token = self.barrier_token + 1;
        let mut sent = Vec::new();
        for &lane in which.unwrap_or(&all) {
            if lane >= lanes.lanes().len() {
                continue;
            }
            lanes.await_barrier(lane, token);
            // No shard yet, or its subscriber is not up: its coming up
            // restarts the lane with a fresh barrier.
            let Some(shard) = shards.map.shard_for(&lanes.lanes()[lane].name) else {
                continue;
            };
            if !sent.contains(&shard) && shards.barrier(shard, token) {
                sent.push(shard);
            }
        }
        if !sent.is_empty() {
            self.barrier_token = token;
        }
    }

    /// Pairs the answers that arrived (and the publishes that failed) with
    /// the requests waiting for them.
    fn settle(&mut self, effects: &mut Effects) -> Vec<(Box<Waiting>, u16, Vec<u8>)> {
        let mut out = Vec::new();
        for a in mem::take(&mut effects.answers) {
            if let Some(waiting) = self.waiting.remove(&a.request) {
                out.push((waiting, a.status, a.body));
            }
        }
        let mut failed: Vec<(u64, u16, &[u8])> = Vec::new();
        for (tag, receivers) in mem::take(&mut effects.published) {
            match receivers {
                // No worker listens on that node channel any more (in a
                // cluster, the count covers one node only: wait).
                Some(0) if self.shards.is_none() => {
                    failed.push((tag, 404, b"sse: unknown session\n"))
                }
                Some(_) => {}
                None => failed.push((tag, 503, b"sse: redis is unavailable\n")),
            }
        }
        if let Some(commands) = self.commands.as_mut() {
            for tag in commands.take_lost_publishes() {
                failed.push((tag, 503, b"sse: redis is unavailable\n"));
            }
        }
        for (tag, status, body) in failed {
            if let Some(waiting) = self.waiting.remove(&tag) {
                out.push((waiting, status, body.to_vec()));
            }
        }
        out
    }

    /// Applies a change to a stream of this worker, whole or not at all;
    /// returns the answer (status, body). The stream gets `sse-channels`
    /// (queued: the caller flushes `dirty`) and, with history, a catch-up of
    /// the added channels.
    fn apply_change(&mut self, change: &Change) -> (u16, Vec<u8>) {
        let unknown = (404, b"sse: unknown session\n".to_vec());
        let Some(&key) = self.streams.get(&change.session.stream) else {
            return unknown;
        };
        let s = stream_mut(key);
        if !s.has_session(&change.session) {
            return unknown;
        }
        if s.user() != change.user.as_deref() {
            return (403, b"sse: the session belongs to another user\n".to_vec());
        }
        // The change request's own grants, evaluated now; a sse_subscribe
        // location without sse_allow keeps the stream's.
        let grants = change.grants.clone().or_else(|| s.grants().cloned());
        let result = session::apply(
            s.subscriptions(),
            &change.add,
            &change.remove,
            s.rules(),
            grants.as_ref(),
        );
        let subscriptions = match result {
            Ok(subscriptions) => subscriptions,
            Err(e @ ChangeError::Channel(_)) => return (400, format!("sse: {e}\n").into_bytes()),
            Err(e @ ChangeError::NotAllowed(_)) => {
                return (403, format!("sse: {e}\n").into_bytes())
            }
        };
        let changed = s.change(subscriptions, grants);
        let gone = self.registry.unsubscribe(key, &changed.gone);
        if !gone.is_empty() {
            self.unsubscribe_keys(&gone);
        }
        let new = self.registry.subscribe(key, &changed.new);
        if !new.is_empty() {
            self.subscribe_keys(&new);
        }
        metrics::gauge_set(Gauge::RedisSubscriptions, self.registry.key_count() as i64);

        // Redis Cluster history: kept lanes keep their positions, new ones
        // read their channel's position; the event carries the stream's new
        // id (the vector of the new channel set).
        let fresh_lanes = s.change_lanes(concrete_of(s.subscriptions()));
        let vector = s.lanes.as_mut().map(|l| l.announce_id());
        let now = session::join(s.subscriptions());
        let event = Frame::encode(&mut self.scratch, |out| {
            let id = vector.as_deref().map(str::as_bytes);
            wire::encode_event(out, Some(CHANNELS_EVENT), id, now.as_bytes())
        });
        s.enqueue(event);
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(key);
        }
        if let Some(fresh) = fresh_lanes {
            self.lane_barriers(key, Some(&fresh));
        }
        if s.replay.is_some() {
            let concrete = concrete_of(s.subscriptions());
            let start = change.since.map_or(Resume::Fresh, Resume::After);
            let added = concrete_of(&changed.added)
                .into_iter()
                .map(|c| (c, start))
                .collect();
            let token = self.barrier_token + 1;
            if let Some(replay) = s.replay.as_mut() {
                if replay.change(concrete, added) {
                    // Read once Redis has the new subscriptions.
                    replay.catch_up(token);
                    if self.subscriber.barrier(token) {
                        self.barrier_token = token;
                    }
                }
            }
        }
        sse_debug!(
            cycle_log(),
            "sse: stream {} channels changed to \"{}\"",
            s.id,
            now
        );
        (200, format!("{now}\n").into_bytes())
    }

    /// The scratch buffer grows to the largest message formatted; after a
    /// large one, give the memory back instead of holding it for good.
    fn shrink_scratch(&mut self) {
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::with_capacity(SCRATCH_KEEP);
        }
    }

    /// Sentinel named the master: point the data connections there.
    fn follow_master(&mut self, ip: &[u8], port: &[u8]) {
        let Some(peer) = Peer::from_ip(ip, port) else {
            ngx_log_error!(
                NGX_LOG_ERR,
                cycle_log(),
                "sse: sentinel named the master \"{}:{}\", which is not an IP address (announce an IP, or set resolve-hostnames off)",
                String::from_utf8_lossy(ip),
                String::from_utf8_lossy(port)
            );
            return;
        };
        if self.master.as_ref() == Some(&peer) {
            return;
        }
        let was = self.master.as_ref().map_or("none".to_string(), |m| {
            String::from_utf8_lossy(m.name()).into_owned()
        });
        ngx_log_error!(
            NGX_LOG_NOTICE,
            cycle_log(),
            "sse: redis master is {} (was {})",
            String::from_utf8_lossy(peer.name()),
            was
        );
        self.subscriber.set_peer(peer.clone());
        if let Some(commands) = self.commands.as_mut() {
            commands.set_peer(peer.clone());
        }
        self.master = Some(peer);
    }

    /// Redis Cluster: reads the topology again soon, sooner while unsettled.
    fn arm_topology_timer(&mut self) {
        let (Some(timer), Some(shards)) = (self.topology_timer.as_mut(), self.shards.as_ref())
        else {
            return;
        };
        if self.exiting {
            return;
        }
        let delay = if shards.stale || !shards.all_ready() {
            TOPOLOGY_UNSETTLED_MS
        } else {
            TOPOLOGY_CALM_MS
        };
        // SAFETY: the worker's own boxed timer; re-adding moves it.
        unsafe { ngx_add_timer(&mut **timer, delay) };
    }

    /// Redis Cluster: something is off; read the topology within
    /// [`TOPOLOGY_UNSETTLED_MS`] rather than at the calm pace.
    fn hurry_topology(&mut self) {
        let Some(timer) = self.topology_timer.as_mut() else {
            return;
        };
        // SAFETY: nginx's clock, read on the worker thread.
        let soon = unsafe { ngx::ffi::ngx_current_msec } + TOPOLOGY_UNSETTLED_MS;
        if self.exiting || (timer.timer_set() != 0 && timer.timer.key <= soon) {
            return;
        }
        // SAFETY: the worker's own boxed timer; re-adding moves it.
        unsafe { ngx_add_timer(&mut **timer, TOPOLOGY_UNSETTLED_MS) };
    }

    /// Subscribes new fan-out keys on the main connection (plain pub/sub)
    /// and, with Redis Cluster, channels also on their shard (sharded
    /// pub/sub): a message comes one way or the other, as it was published
    /// (SPUBLISH or PUBLISH), never both.
    fn subscribe_keys(&mut self, keys: &[&[u8]]) {
        self.subscriber.subscribe(keys);
        if let Some(shards) = self.shards.as_mut() {
            shards.subscribe(keys);
        }
    }

    fn unsubscribe_keys(&mut self, keys: &[&[u8]]) {
        self.subscriber.unsubscribe(keys);
        if let Some(shards) = self.shards.as_mut() {
            shards.unsubscribe(keys);
        }
    }

    fn close_redis(&mut self) {
        self.subscriber.close();
        if let Some(shards) = self.shards.as_mut() {
            shards.close();
        }
        if let Some(timer) = self.topology_timer.as_mut() {
            if timer.timer_set() != 0 {
                // SAFETY: the worker's own timer.
                unsafe { ngx_del_timer(&mut **timer) };
            }
        }
        if let Some(sentinel) = self.sentinel.as_mut() {
            sentinel.close();
        }
        if let Some(commands) = self.commands.as_mut() {
            commands.close();
        }
    }
}

/// The concrete channels among `patterns`, for the history.
fn concrete_of(patterns: &[Pattern]) -> Vec<Box<[u8]>> {
    patterns
        .iter()
        .filter(|p| p.is_concrete())
        .map(|p| Box::<[u8]>::from(p.as_bytes()))
        .collect()
}

/// Writes the frames queued in one batch, one write per stream.
fn flush_all(mut batch: Vec<StreamKey>) {
    for &key in &batch {
        let s = stream_mut(key);
        s.dirty = false;
        let c = s.request_connection();
        // SAFETY: keys in a batch are live: a stream leaves the batch when it
        // is unregistered, and only the stream being flushed can end here.
        unsafe { Stream::flush(key) };
        if let Some(c) = c {
            // SAFETY: the connection outlives the posted requests it runs.
            unsafe { ngx_http_run_posted_requests(c) };
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
///
/// # Safety
/// nginx calls it in the worker process with its cycle.
pub unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: see above.
    let cycle = unsafe { &*cycle };
    // nginx's cache manager and loader run init_process too (and exit
    // without exit_process): they serve no stream.
    // SAFETY: ngx_process is set before modules' init_process runs.
    let process = unsafe { ngx::ffi::ngx_process } as u32;
    if process != ngx::ffi::NGX_PROCESS_WORKER && process != ngx::ffi::NGX_PROCESS_SINGLE {
        return NGX_OK as ngx_int_t;
    }
    let Some(main) = SseModule::main_conf(cycle) else {
        return NGX_OK as ngx_int_t;
    };
    metrics::claim(main.metrics_zone);
    let Some(target) = main.redis.as_ref().filter(|_| main.used) else {
        // No sse_channel anywhere: no Redis connection either.
        return NGX_OK as ngx_int_t;
    };
    let node = u64::from_ne_bytes(random_bytes().unwrap_or_else(|| {
        // No CSPRNG: still unique enough to route (tokens need none).
        // SAFETY: nginx's pid and clock, set before init_process runs.
        let (pid, msec) = unsafe { (ngx::ffi::ngx_pid as u64, ngx::ffi::ngx_current_msec as u64) };
        (pid ^ (msec << 20)).to_ne_bytes()
    }));
    let node_channel = session::node_channel(node).into_bytes();
    let url = &target.url;
    let auth = auth_args(url.username.as_deref(), url.password.as_deref());
    // With Sentinel, the data connections wait for it to name the master.
    let data_peers = match url.sentinel {
        Some(_) => Vec::new(),
        None => target.peers.clone(),
    };
    let cluster = url.cluster.is_some();
    let subscriber = Connection::new(
        data_peers.clone(),
        auth.clone(),
        Link::main(Role::Subscriber),
        Subscriber::new(main.sessions_used.then(|| node_channel.clone())),
    );
    // With Redis Cluster the commands connection also reads the topology.
    let commands = (main.history_used || main.sessions_used || cluster).then(|| {
        // After a failover, ids restart in a new epoch (redis/sse.lua).
        let epochs = url.sentinel.as_ref().map(|_| main.prefix().to_string());
        // A cluster's function would have to be loaded on every master
        // (and history is not supported there yet).
        let function = (!cluster).then_some(PUBLISH_FUNCTION);
        let mut protocol = Commands::new(function, url.db, epochs);
        protocol.cluster = cluster;
        Connection::new(
            data_peers,
            auth.clone(),
            Link::main(Role::Commands),
            protocol,
        )
    });
    let sentinel = url.sentinel.as_ref().map(|s| {
        Connection::new(
            target.peers.clone(),
            auth_args(s.username.as_deref(), s.password.as_deref()),
            Link::main(Role::Sentinel),
            SentinelWatch::new(&s.service),
        )
    });
    let shards = cluster.then(|| Shards::new(auth, main.history_used.then_some(PUBLISH_FUNCTION)));
    let mut topology_ident = TimerIdent::new(ptr::null_mut());
    let topology_timer = cluster.then(|| {
        // SAFETY: all-zero is the initial state of an nginx event.
        let mut ev: Box<ngx_event_t> = Box::new(unsafe { std::mem::zeroed() });
        ev.data = topology_ident.as_data();
        ev.handler = Some(topology_tick);
        ev.log = cycle.log;
        // The timer never keeps an exiting worker alive.
        ev.set_cancelable(1);
        ev
    });
    let shutdown_watch = new_shutdown_watch(cycle);
    stream::set_end_hook(unregister);
    redis::set_event_hook(on_redis_event);
    WORKER.with(|cell| {
        *cell.borrow_mut() = Some(Worker {
            registry: Registry::default(),
            streams: HashMap::new(),
            next_stream_id: 0,
            subscriber,
            commands,
            sentinel,
            master: None,
            shards,
            topology_timer,
            _topology_ident: topology_ident,
            prefix: main.prefix().to_string(),
            max_message: main.max_message,
            barrier_token: 0,
            node,
            node_channel,
            waiting: HashMap::new(),
            next_change: 0,
            dirty: Vec::new(),
            scratch: Vec::with_capacity(SCRATCH_KEEP),
            shutdown_watch,
            exiting: false,
        })
    });
    for role in [Role::Sentinel, Role::Subscriber, Role::Commands] {
        on_redis_event(Link::main(role), RedisEvent::Start, ptr::null_mut());
    }
    with(Worker::arm_topology_timer);
    NGX_OK as ngx_int_t
}

/// Redis Cluster: how often the topology is read while all is well, and
/// while something is off (a shard down, a slot moved, slots unserved).
const TOPOLOGY_CALM_MS: ngx_msec_t = 10_000;
const TOPOLOGY_UNSETTLED_MS: ngx_msec_t = 500;

unsafe extern "C" fn topology_tick(_ev: *mut ngx_event_t) {
    with(|w| {
        if let Some(commands) = w.commands.as_mut() {
            commands.ask_topology();
        }
        w.arm_topology_timer();
    });
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
    // SAFETY: worker thread, valid descriptor.
    let c = unsafe { ngx_get_connection(fd, cycle.log) };
    if c.is_null() {
        // SAFETY: the descriptor is ours and nothing else holds it.
        unsafe { libc::close(fd) };
        return ptr::null_mut();
    }
    // SAFETY: `c` is a fresh connection. It is never added to the event
    // loop: nginx only calls its read handler, with `close` set, from
    // ngx_close_idle_connections().
    unsafe {
        (*(*c).read).handler = Some(shutdown_handler);
        (*c).set_idle(1);
    }
    c
}

/// Graceful shutdown has begun: stop taking messages and end every stream
/// with a complete response, so browsers reconnect at once (to a new worker).
unsafe extern "C" fn shutdown_handler(_ev: *mut ngx_event_t) {
    let (streams, waiting) = with(|w| {
        w.exiting = true;
        w.close_redis();
        let waiting: Vec<Box<Waiting>> = w.waiting.drain().map(|(_, v)| v).collect();
        (w.registry.all_subscribers(), waiting)
    })
    .unwrap_or_default();
    for waiting in waiting {
        // SAFETY: a waiting request is live until answered or cleaned up.
        unsafe { answer(waiting, 503, b"sse: server is shutting down\n") };
    }
    // SAFETY: the streams are registered (live), each listed once.
    unsafe { stream::end_all(streams, CloseReason::Reload) };
    close_shutdown_watch();
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
///
/// # Safety
/// nginx calls it in the exiting worker process.
pub unsafe extern "C" fn exit_process(cycle: *mut ngx_cycle_t) {
    with(Worker::close_redis);
    // SAFETY: nginx passes the worker's cycle.
    if let Some(main) = SseModule::main_conf(unsafe { &*cycle }) {
        metrics::release(main.metrics_zone);
    }
    close_shutdown_watch();
    WORKER.with(|cell| cell.borrow_mut().take());
}
