//! Fan-out: what the worker does with what Redis hands it, while a Redis
//! event is being handled. Messages go to the streams subscribed to the key
//! that delivered them (formatted once, shared by all); control messages
//! revoke users; refusals end the streams that asked for the refused key;
//! history replies complete replays.
//!
//! Nothing here calls into nginx's request code: what must end or flush a
//! stream is recorded in [`Effects`] and done by the worker once the Redis
//! handler has returned (ending a stream re-enters the worker's state).

use std::collections::HashMap;

use ngx::ffi::{NGX_LOG_ERR, NGX_LOG_WARN};
use ngx::ngx_log_error;
use sse_core::channel;
use sse_core::cluster::Topology;
use sse_core::envelope::{self, Control, CONTROL_CHANNEL};
use sse_core::frame;
use sse_core::registry::Registry;
use sse_core::resp::Value;
use sse_core::session::{self, Answer, Change, NodeMessage};

use crate::frame::{Frame, REFUSED_EVENT};
use crate::metrics;
use crate::ngx_ext::cycle_log;
use crate::redis::{ClusterMap, CommandsSink, Request, SubscriberSink};
use crate::replay::Phase;
use crate::stream::{Stream, StreamKey};
use sse_core::lanes::{self, LanePhase};
use sse_core::metrics::Counter;

/// What a Redis event handler asks the worker to do afterwards.
#[derive(Default)]
pub struct Effects {
    /// Send a barrier (the token is `barrier_token + 1`).
    pub barrier: bool,
    /// Streams whose history reads should go out now.
    pub fetch: Vec<u64>,
    /// Streams (by id) to end cleanly: revocation. Ids, not keys: flushing
    /// the batch first may already have ended one.
    pub revoked: Vec<u64>,
    /// Streams (by id) to end because Redis refused one of their
    /// subscriptions, with the `sse-refused` event that tells them which.
    pub refused: Vec<(u64, Frame)>,
    /// Live changes that other workers forwarded, to apply and answer.
    pub changes: Vec<Change>,
    /// Owners' answers to changes this worker forwarded.
    pub answers: Vec<Answer>,
    /// Receiver counts of this worker's forwarded changes (`None`: Redis
    /// refused the PUBLISH).
    pub published: Vec<(u64, Option<i64>)>,
    /// Redis Cluster: channels a shard sent away (moved slots).
    pub moved: Vec<Box<[u8]>>,
    /// Redis Cluster: the topology that CLUSTER SLOTS answered.
    pub topology: Option<Topology>,
    /// Redis Cluster: a shard connection is down.
    pub shard_down: bool,
    /// Redis Cluster: lanes (stream id, lane) whose history reads should
    /// go out now.
    pub fetch_lanes: Vec<(u64, usize)>,
    /// Redis Cluster: shards on which to send a barrier (the token is
    /// `barrier_token + 1`).
    pub shard_barriers: Vec<usize>,
    /// With Sentinel: the named master is not one; ask Sentinel again.
    pub reask_master: bool,
}

/// Which of the fan-out's keys a subscriber connection carries.
#[derive(Clone, Copy)]
pub enum Scope<'a> {
    /// Every key (the main subscriber, plain pub/sub).
    All,
    /// Redis Cluster, a shard: the channels its master serves.
    Shard(&'a ClusterMap, usize),
}

impl Scope<'_> {
    fn includes(&self, key: &[u8]) -> bool {
        match self {
            Scope::All => true,
            Scope::Shard(map, shard) => map.shard_for(key) == Some(*shard),
        }
    }
}

/// The worker as its Redis connections see it while they handle an event.
pub struct Fanout<'a> {
    pub registry: &'a Registry<StreamKey>,
    pub streams: &'a HashMap<u64, StreamKey>,
    /// Streams that received frames in this batch, to flush once each.
    pub dirty: &'a mut Vec<StreamKey>,
    /// Reused buffer in which each message is formatted once.
    pub scratch: &'a mut Vec<u8>,
    /// The token the next barrier will carry.
    pub next_token: u64,
    pub effects: &'a mut Effects,
    /// `sse_redis_prefix`: events whose id another prefix issued are not ours.
    pub prefix: &'a [u8],
    /// `sse_max_message_size`.
    pub max_message: usize,
    /// This worker's node channel (live changes).
    pub node_channel: &'a [u8],
    /// The keys of the connection whose event is handled.
    pub scope: Scope<'a>,
}

/// A registered stream. Registered streams are live, and nothing here runs
/// nginx code that could end one.
fn stream<'s>(key: StreamKey) -> &'s mut Stream {
    // SAFETY: see above; the fan-out only holds keys of registered streams.
    unsafe { &mut *key.as_ptr() }
}

impl Fanout<'_> {
    fn mark_dirty(&mut self, key: StreamKey) {
        let s = stream(key);
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(key);
        }
    }

    /// The streams that keep history per channel (Redis Cluster).
    fn with_lanes(&self) -> Vec<(u64, StreamKey)> {
        self.streams
            .iter()
            .filter(|(_, &key)| stream(key).lanes.is_some())
            .map(|(&id, &key)| (id, key))
            .collect()
    }

    /// The streams that keep history, with their ids.
    fn replaying(&self) -> Vec<(u64, StreamKey)> {
        self.streams
            .iter()
            .filter(|(_, &key)| stream(key).replay.is_some())
            .map(|(&id, &key)| (id, key))
            .collect()
    }

    fn control(&mut self, payload: &[u8]) {
        match envelope::parse_control(payload) {
            Ok(Control::Revoke(users)) => {
                for (&id, &key) in self.streams {
                    if stream(key).user().is_some_and(|u| users.contains(&u)) {
                        self.effects.revoked.push(id);
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

impl Fanout<'_> {
    /// A change forwarded to this worker, or an answer to one it forwarded.
    fn node_message(&mut self, payload: &[u8]) {
        match session::parse_node_message(payload) {
            Ok(NodeMessage::Change(change)) => self.effects.changes.push(change),
            Ok(NodeMessage::Answer(answer)) => self.effects.answers.push(answer),
            Err(e) => {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    cycle_log(),
                    "sse: skipped a message on this worker's node channel: {}",
                    e
                );
            }
        }
    }
}

impl SubscriberSink for Fanout<'_> {
    fn message(&mut self, key: &[u8], channel: &[u8], payload: &[u8]) {
        if channel::is_reserved(channel) {
            // The module's own channels never reach clients. A client's
            // pattern glob (`*:*`) can match them too: only the worker's
            // own subscription counts, so each control message acts once.
            if key == CONTROL_CHANNEL.as_bytes() {
                self.control(payload);
            } else if key == self.node_channel {
                self.node_message(payload);
            }
            return;
        }
        metrics::count(Counter::RedisMessages, 1);
        let subscribers = self.registry.subscribers(key);
        if subscribers.is_empty() {
            // Unsubscribed a moment ago; Redis had already sent it.
            return;
        }
        if payload.len() > self.max_message {
            metrics::count(Counter::SkippedTooLarge, 1);
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
                metrics::count(Counter::SkippedMalformed, 1);
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
            metrics::count(Counter::SkippedForeignPrefix, 1);
            // Published with history under another sse_redis_prefix: its id
            // is a position in another application's sequence.
            sse_debug!(
                cycle_log(),
                "sse: skipped an event of another sse_redis_prefix on \"{}\"",
                String::from_utf8_lossy(channel).escape_debug()
            );
            return;
        }
        // Formatted once, on first use, and shared by every recipient.
        let mut shared: Option<Frame> = None;
        // Redis Cluster history streams add their own id to the body.
        let mut body: Option<Frame> = None;
        for &sub in subscribers {
            let s = stream(sub);
            if !s.admits(key, channel, &envelope) {
                continue;
            }
            if let (Some(id), Some(_)) = (envelope.id, s.lanes.as_ref()) {
                let body = body
                    .get_or_insert_with(|| lanes::body_frame(self.scratch, channel, envelope.body));
                s.deliver_lane(channel, id, body.clone(), &mut Vec::new());
                if !s.dirty {
                    s.dirty = true;
                    self.dirty.push(sub);
                }
                continue;
            }
            let frame = shared.get_or_insert_with(|| {
                let id = envelope.id.map(|id| id.to_string());
                Frame::encode(self.scratch, |out| {
                    frame::encode_event(
                        out,
                        Some(channel),
                        id.as_deref().map(str::as_bytes),
                        envelope.body,
                    )
                })
            });
            s.deliver(envelope.id, frame.clone());
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(sub);
            }
        }
    }

    fn keys(&self) -> Vec<Vec<u8>> {
        self.registry
            .keys()
            .filter(|k| self.scope.includes(k))
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn moved(&mut self, key: &[u8]) {
        self.effects.moved.push(key.into());
    }

    fn resubscribed(&mut self) {
        // Whatever was published while the subscription was down is read
        // back from the history, after a barrier.
        let token = self.next_token;
        if let Scope::Shard(map, shard) = self.scope {
            let mut any = false;
            for (_, key) in self.with_lanes() {
                let Some(lanes) = stream(key).lanes.as_mut() else {
                    continue;
                };
                for lane in 0..lanes.lanes().len() {
                    if map.shard_for(&lanes.lanes()[lane].name) == Some(shard) {
                        lanes.restart(lane, token);
                        any = true;
                    }
                }
            }
            if any {
                self.effects.shard_barriers.push(shard);
            }
            return;
        }
        let replaying = self.replaying();
        for (_, key) in &replaying {
            if let Some(replay) = stream(*key).replay.as_mut() {
                replay.restart(token);
            }
        }
        self.effects.barrier |= !replaying.is_empty();
    }

    fn barrier(&mut self, token: u64) {
        if let Scope::Shard(map, shard) = self.scope {
            for (id, key) in self.with_lanes() {
                let Some(lanes) = stream(key).lanes.as_mut() else {
                    continue;
                };
                for lane in 0..lanes.lanes().len() {
                    let here = map.shard_for(&lanes.lanes()[lane].name) == Some(shard);
                    if here && lanes.awaits(lane, token) {
                        if let Some(l) = lanes.lane_mut(lane) {
                            l.phase = LanePhase::Queued;
                        }
                        self.effects.fetch_lanes.push((id, lane));
                    }
                }
            }
            return;
        }
        for (id, key) in self.replaying() {
            if let Some(replay) = stream(key).replay.as_mut() {
                if matches!(replay.phase, Phase::AwaitingBarrier(t) if t <= token) {
                    replay.phase = Phase::Queued;
                    self.effects.fetch.push(id);
                }
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
        for &sub in subscribers {
            let s = stream(sub);
            let listed = self.effects.refused.iter().any(|(id, _)| *id == s.id);
            if let (false, Some(name)) = (listed, s.subscription_for_key(key)) {
                let event = Frame::encode(self.scratch, |out| {
                    frame::encode_event(out, Some(REFUSED_EVENT), None, name)
                });
                self.effects.refused.push((s.id, event));
            }
        }
    }
}

impl CommandsSink for Fanout<'_> {
    fn commands_ready(&mut self) {
        if let Scope::Shard(map, shard) = self.scope {
            for (id, key) in self.with_lanes() {
                let Some(lanes) = stream(key).lanes.as_ref() else {
                    continue;
                };
                for (lane, l) in lanes.lanes().iter().enumerate() {
                    if l.phase == LanePhase::Queued && map.shard_for(&l.name) == Some(shard) {
                        self.effects.fetch_lanes.push((id, lane));
                    }
                }
            }
            return;
        }
        for (id, key) in self.replaying() {
            if stream(key)
                .replay
                .as_ref()
                .is_some_and(|r| r.phase == Phase::Queued)
            {
                self.effects.fetch.push(id);
            }
        }
    }

    fn not_master(&mut self) {
        self.effects.reask_master = true;
    }

    fn published(&mut self, tag: u64, receivers: Option<i64>) {
        self.effects.published.push((tag, receivers));
    }

    fn topology(&mut self, value: &Value<'_>) {
        match Topology::parse(value) {
            Some(topology) => self.effects.topology = Some(topology),
            None => {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    cycle_log(),
                    "sse: CLUSTER SLOTS answered something else than a topology; asking again"
                );
            }
        }
    }

    fn reply(&mut self, request: Request, value: &Value<'_>) {
        let Some(&key) = self.streams.get(&request.stream) else {
            return; // the stream ended meanwhile
        };
        let s = stream(key);
        let problem = if let Some(lane) = request.lane {
            let lane = lane as usize;
            let current = s
                .lanes
                .as_ref()
                .and_then(|l| l.lanes().get(lane))
                .is_some_and(|l| {
                    l.generation == request.generation && l.phase == LanePhase::Fetching
                });
            if !current {
                return; // a reply to an abandoned read
            }
            s.finish_lane(lane, value, self.scratch, self.max_message)
        } else {
            let current = s
                .replay
                .as_ref()
                .is_some_and(|r| r.generation == request.generation && r.phase == Phase::Fetching);
            if !current {
                return; // a reply to an abandoned read
            }
            s.finish_replay(value, self.scratch, self.max_message)
        };
        if let Some(problem) = problem {
            ngx_log_error!(
                NGX_LOG_WARN,
                cycle_log(),
                "sse: history read failed: {}",
                problem
            );
        }
        self.mark_dirty(key);
    }
}
