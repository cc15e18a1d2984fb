//! The history side of a stream on a Redis Cluster (`sse_history on` with a
//! `redis-cluster://` URL): one *lane* per channel.
//!
//! In a cluster each channel's history has its own sequence, on the node
//! that serves the channel's slot (redis/sse.lua, `FCALL sse_publish 1`). So
//! a stream keeps one position per channel, reads each channel's history on
//! its own node, and de-duplicates per channel; its SSE id is the vector of
//! those positions (`sse_core::position`). Events of one channel arrive in
//! order; events of different channels have no common order.
//!
//! Each lane goes through the steps of a standalone replay on its own:
//! `AwaitingBarrier` (its SSUBSCRIBE is confirmed by a PING answered on its
//! shard's subscriber), `Queued` / `Fetching` (one MULTI/EXEC on its shard's
//! commands connection: the channel's sequence and its entries after the
//! position), then `Live`. While a lane is not live its live events are
//! held, and sent after its replay minus the ids the replay contained.

use sse_core::frame;
use sse_core::history::{self, ChannelHistory, Plan, Resume};
use sse_core::position;
use sse_core::resp::Value;

use crate::frame::Frame;
use crate::metrics;
use crate::replay::GAP_EVENT;
use sse_core::metrics::Counter;

/// Most entries read per channel in one replay.
const MAX_REPLAY: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LanePhase {
    /// Waiting for the barrier `token` on the lane's shard.
    AwaitingBarrier(u64),
    Queued,
    Fetching,
    Live,
}

pub struct Lane {
    pub name: Box<[u8]>,
    /// The last id sent on this channel (0: none yet).
    position: u64,
    /// Where the next read starts (`None`: nothing to read).
    start: Option<Resume>,
    pub phase: LanePhase,
    /// Bumped at each restart, so late replies are ignored.
    pub generation: u32,
    /// Live events held while the lane is not live: id and body frame.
    held: Vec<(u64, Frame)>,
}

/// A stream's lanes, sorted by channel name (the order of the id vector).
pub struct Lanes {
    lanes: Vec<Lane>,
    /// `sse_history_start`: last N per channel for a fresh lane.
    start_last: usize,
    /// Whether the client's resume was counted in the metrics.
    counted: bool,
    /// The client's resume was an id we could not read.
    malformed: bool,
    /// The last generation handed out: one counter for all lanes, so that
    /// a reply to a read of a lane that moved index (a live change) never
    /// matches the lane now at that index.
    generations: u32,
}

impl Lanes {
    /// The lanes of a new stream: its concrete channels, each from where
    /// the client's `Last-Event-ID` (a position vector) puts it.
    pub fn new(channels: Vec<Box<[u8]>>, resume: Option<&[u8]>, start_last: usize) -> Lanes {
        let mut names = channels;
        names.sort();
        names.dedup();
        let positions = resume.map(|raw| position::decode(raw, &names));
        let malformed = matches!(positions, Some(None));
        let lanes = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let start = match &positions {
                    None => Resume::Fresh,
                    Some(None) => Resume::Malformed,
                    Some(Some(p)) => Resume::After(p[i]),
                };
                Lane {
                    name,
                    position: match start {
                        Resume::After(p) => p,
                        _ => 0,
                    },
                    start: Some(start),
                    phase: LanePhase::AwaitingBarrier(0),
                    generation: 0,
                    held: Vec::new(),
                }
            })
            .collect();
        Lanes {
            lanes,
            start_last,
            counted: resume.is_none(),
            malformed,
            generations: 0,
        }
    }

    fn next_generation(&mut self) -> u32 {
        self.generations = self.generations.wrapping_add(1);
        self.generations
    }

    pub fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    pub fn lane_mut(&mut self, i: usize) -> Option<&mut Lane> {
        self.lanes.get_mut(i)
    }

    /// The lane of a channel.
    pub fn find(&self, channel: &[u8]) -> Option<usize> {
        self.lanes.binary_search_by(|l| (*l.name).cmp(channel)).ok()
    }

    /// The stream's id now.
    pub fn id(&self) -> String {
        let names: Vec<&[u8]> = self.lanes.iter().map(|l| &*l.name).collect();
        let positions: Vec<u64> = self.lanes.iter().map(|l| l.position).collect();
        position::encode(&names, &positions)
    }

    /// The id line that follows an event's body.
    fn id_frame(&self) -> Frame {
        Frame::Shared(format!("id: {}\n\n", self.id()).into_bytes().into())
    }

    /// A lane's shard lost and regained its subscriber: read what was
    /// missed, after the barrier `token`.
    pub fn restart(&mut self, lane: usize, token: u64) {
        let generation = self.next_generation();
        if let Some(l) = self.lanes.get_mut(lane) {
            if l.phase == LanePhase::Live {
                l.start = Some(Resume::After(l.position));
            }
            l.generation = generation;
            l.phase = LanePhase::AwaitingBarrier(token);
        }
    }

    /// Back to the queue (the commands connection broke mid-read).
    pub fn requeue(&mut self, lane: usize) {
        let generation = self.next_generation();
        if let Some(l) = self.lanes.get_mut(lane) {
            l.generation = generation;
            l.phase = LanePhase::Queued;
        }
    }

    /// A live change: the stream's concrete channels are now `channels`.
    /// Kept lanes keep their state, new ones start as on a new stream (a
    /// cluster id names no position for a channel the stream did not have);
    /// returns the indices of the lanes to read (after a barrier).
    pub fn change(&mut self, channels: Vec<Box<[u8]>>) -> Vec<usize> {
        let mut names = channels;
        names.sort();
        names.dedup();
        let mut old = std::mem::take(&mut self.lanes);
        let mut fresh = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            match old.iter().position(|l| l.name == name) {
                Some(j) => {
                    let mut lane = old.swap_remove(j);
                    // Replies to reads in flight name the old index.
                    if lane.phase != LanePhase::Live {
                        lane.generation = self.generations.wrapping_add(1);
                        self.generations = lane.generation;
                        lane.phase = LanePhase::AwaitingBarrier(0);
                        fresh.push(i);
                    }
                    self.lanes.push(lane);
                }
                None => {
                    // Read even without sse_history_start: the channel's
                    // sequence is the lane's position from then on.
                    fresh.push(i);
                    self.lanes.push(Lane {
                        name,
                        position: 0,
                        start: Some(Resume::Fresh),
                        phase: LanePhase::AwaitingBarrier(0),
                        generation: self.generations.wrapping_add(1),
                        held: Vec::new(),
                    });
                    self.generations = self.generations.wrapping_add(1);
                }
            }
        }
        fresh
    }

    /// A lane waits for the barrier `token` on its shard before its read.
    pub fn await_barrier(&mut self, lane: usize, token: u64) {
        let generation = self.next_generation();
        if let Some(l) = self.lanes.get_mut(lane) {
            // A live lane reads from where it is.
            l.start.get_or_insert(Resume::After(l.position));
            l.generation = generation;
            l.phase = LanePhase::AwaitingBarrier(token);
        }
    }

    /// Whether a lane waits for the barrier `token` of its shard.
    pub fn awaits(&self, lane: usize, token: u64) -> bool {
        matches!(self.lanes.get(lane), Some(l) if matches!(l.phase, LanePhase::AwaitingBarrier(t) if t <= token))
    }

    /// The reads of a lane, as one transaction on its shard.
    pub fn requests(&mut self, lane: usize, prefix: &str) -> Vec<Vec<Vec<u8>>> {
        let start_last = self.start_last;
        let Some(l) = self.lanes.get_mut(lane) else {
            return Vec::new();
        };
        l.phase = LanePhase::Fetching;
        let base = [format!("{prefix}:{{").as_bytes(), &l.name, b"}"].concat();
        let state = [&base[..], b":s"].concat();
        let stream = [&base[..], b":h"].concat();
        let mut out = vec![vec![b"HGET".to_vec(), state, b"n".to_vec()]];
        match l.start {
            Some(Resume::After(since)) => out.push(vec![
                b"XREVRANGE".to_vec(),
                stream,
                b"+".to_vec(),
                format!("({since}-0").into_bytes(),
                b"COUNT".to_vec(),
                MAX_REPLAY.to_string().into_bytes(),
            ]),
            Some(Resume::Fresh | Resume::Malformed) if start_last > 0 => out.push(vec![
                b"XREVRANGE".to_vec(),
                stream,
                b"+".to_vec(),
                b"-".to_vec(),
                b"COUNT".to_vec(),
                start_last.to_string().into_bytes(),
            ]),
            _ => {}
        }
        out
    }

    /// Whether a lane is live (its events are sent as they come).
    pub fn is_live(&self, lane: usize) -> bool {
        self.lanes
            .get(lane)
            .is_some_and(|l| l.phase == LanePhase::Live)
    }

    /// A live event of a lane: held while the lane replays, dropped if its
    /// id was already sent, otherwise the frames to queue (an `sse-gap`
    /// first when it opens a new epoch of that channel: a Redis failover).
    pub fn live(&mut self, lane: usize, id: u64, body: Frame, scratch: &mut Vec<u8>) -> Vec<Frame> {
        let Some(l) = self.lanes.get_mut(lane) else {
            return Vec::new();
        };
        if l.phase != LanePhase::Live {
            l.held.push((id, body));
            return Vec::new();
        }
        if id <= l.position {
            return Vec::new();
        }
        let crossed = l.position > 0 && history::epoch(id) > history::epoch(l.position);
        l.position = id;
        let mut out = Vec::with_capacity(3);
        if crossed {
            out.push(gap_frame(scratch, &[&l.name]));
        }
        out.push(body);
        out.push(self.id_frame());
        out
    }

    /// Bytes a lane holds, for backlog accounting.
    pub fn held_bytes(&self, lane: usize) -> usize {
        self.lanes
            .get(lane)
            .map_or(0, |l| l.held.iter().map(|(_, f)| f.len()).sum())
    }

    /// A lane's reads are in (`value`, the EXEC reply): the frames to send,
    /// in order (gap notice, replay, held live events it did not contain).
    /// The replay keeps its newest events within `budget` bytes.
    pub fn complete(
        &mut self,
        lane: usize,
        value: &Value<'_>,
        user: Option<&[u8]>,
        scratch: &mut Vec<u8>,
        budget: usize,
        max_message: usize,
    ) -> (Vec<Frame>, Option<String>) {
        let start_last = self.start_last;
        let Some(l) = self.lanes.get_mut(lane) else {
            return (Vec::new(), None);
        };
        let start = l.start.take().unwrap_or(Resume::After(l.position));
        let mut problem = None;
        let mut failed = false;
        let (seq, entries) = match value {
            Value::Array(Some(replies)) if !replies.is_empty() => {
                let seq = match &replies[0] {
                    Value::Bulk(None) => 0,
                    reply => reply
                        .as_bytes()
                        .and_then(sse_core::envelope::parse_id)
                        .unwrap_or_else(|| {
                            problem = Some("sequence is not a number".to_string());
                            0
                        }),
                };
                let entries = match replies.get(1).map(history::parse_entries) {
                    None => Vec::new(),
                    Some(Ok(entries)) => entries,
                    Some(Err(e)) => {
                        failed = true;
                        problem = Some(e.to_string());
                        Vec::new()
                    }
                };
                (seq, entries)
            }
            _ => {
                failed = true;
                problem = Some("history transaction failed".to_string());
                (0, Vec::new())
            }
        };
        let history = ChannelHistory {
            entries,
            last_id: Some(seq),
        };
        let Plan { gaps, events, .. } = history::plan_each(seq, start_last, vec![(history, start)]);
        let mut gap = !gaps.is_empty() || failed;
        // (A failed read says nothing of the sequence: the position stays.)
        if !failed && (matches!(start, Resume::After(since) if since > seq) || l.position > seq) {
            // Redis lost this channel's sequence (or the id came from
            // elsewhere): what comes next is numbered from its position.
            l.position = seq;
        }
        let before = l.position;
        let planned: Vec<u64> = events.iter().map(|(_, e)| e.id).collect();
        if let Some((_, newest)) = events.last() {
            l.position = l.position.max(newest.id);
        }
        let events: Vec<_> = events
            .into_iter()
            .filter(|(_, e)| e.data.len() <= max_message && e.admits(user))
            .collect();
        let name_len = l.name.len();
        let (events, cut) =
            history::newest_within(events, budget, |_, e| e.data.len() + name_len + 32);
        gap |= !cut.is_empty();
        metrics::count(Counter::EventsReplayed, events.len() as u64);
        let name = l.name.clone();
        let held = std::mem::take(&mut l.held);
        match start {
            Resume::After(since) => l.position = l.position.max(since.min(seq)),
            Resume::Fresh | Resume::Malformed => l.position = l.position.max(seq),
        }
        l.phase = LanePhase::Live;
        let final_position = l.position;

        let mut out = Vec::with_capacity(2 * (events.len() + held.len()) + 1);
        if gap {
            out.push(gap_frame(scratch, &[&name]));
        }
        // Each event is followed by the stream's id with this lane at it.
        let emit = |lanes: &mut Lanes, id: u64, body: Frame, out: &mut Vec<Frame>| {
            if let Some(l) = lanes.lanes.get_mut(lane) {
                l.position = id;
            }
            out.push(body);
            out.push(lanes.id_frame());
        };
        for (_, entry) in events {
            scratch.clear();
            frame::encode_event(scratch, Some(&name), None, entry.data);
            scratch.pop(); // the blank line comes after the id
            emit(
                self,
                entry.id,
                Frame::Shared(scratch.as_slice().into()),
                &mut out,
            );
        }
        // Held events the replay did not contain, and not older than it
        // (they are in id order after it: they came after the read).
        let newest_planned = planned.last().copied().unwrap_or(0);
        for (id, body) in held {
            if id <= before || id <= newest_planned {
                continue;
            }
            emit(self, id, body, &mut out);
        }
        if let Some(l) = self.lanes.get_mut(lane) {
            l.position = l.position.max(final_position);
            // Into a new epoch (a failover) from where the client was: the
            // lost master's last events may be missing, whatever the read
            // said (held live events are not in its chain).
            let from = match start {
                Resume::After(since) => since.min(seq).max(before),
                _ => before,
            };
            // Nothing known before (a resume from 0): the oldest replayed.
            let from = if from > 0 {
                from
            } else {
                planned.first().copied().unwrap_or(0)
            };
            if !gap && from > 0 && history::epoch(l.position) > history::epoch(from) {
                out.insert(0, gap_frame(scratch, &[&name]));
                gap = true;
            }
        }
        self.count_resume(gap);
        (out, problem)
    }

    /// Counts the client's resume once, when its first lane completes
    /// (`replayed`, `gap` or `invalid_id`).
    fn count_resume(&mut self, gap: bool) {
        if self.counted {
            return;
        }
        self.counted = true;
        metrics::count(
            if self.malformed {
                Counter::ResumeInvalid
            } else if gap {
                Counter::ResumeGap
            } else {
                Counter::ResumeReplayed
            },
            1,
        );
    }
}

/// `sse-gap` naming these channels.
fn gap_frame(scratch: &mut Vec<u8>, names: &[&[u8]]) -> Frame {
    scratch.clear();
    frame::encode_event(scratch, Some(GAP_EVENT), None, &names.join(&b","[..]));
    Frame::Shared(scratch.as_slice().into())
}

/// An event's body for a cluster history stream: `event:` and `data:`
/// lines without the blank line, which comes after the stream's own id.
pub fn body_frame(scratch: &mut Vec<u8>, channel: &[u8], data: &[u8]) -> Frame {
    scratch.clear();
    frame::encode_event(scratch, Some(channel), None, data);
    scratch.pop();
    Frame::Shared(scratch.as_slice().into())
}
