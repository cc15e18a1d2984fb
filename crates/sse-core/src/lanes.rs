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

use crate::frame::{self, Frame};
use crate::history::{self, gap_frame, ChannelHistory, Plan, Resume};
use crate::metrics::Counter;
use crate::position;
use crate::resp::Value;

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
    /// Whether `position` is known: a lane of a new stream or an added
    /// channel learns it from its first read. Until then the stream's id
    /// says `-` for it, so that a reconnect meanwhile starts the channel
    /// afresh instead of replaying its history from 0.
    known: bool,
    /// Where the next read starts (`None`: nothing to read).
    start: Option<Resume>,
    pub phase: LanePhase,
    /// Bumped at each restart, so late replies are ignored.
    pub generation: u32,
    /// Live events held while the lane is not live: id and body frame.
    held: Vec<(u64, Frame)>,
}

impl Lane {
    /// Where a read of this lane starts: after its position, or as a new
    /// stream's lane if that was never known (never from 0: that would
    /// replay the channel's whole history).
    fn resume_point(&self) -> Resume {
        if self.known {
            Resume::After(self.position)
        } else {
            Resume::Fresh
        }
    }
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
    /// Whether the client was sent an id: it then holds `-` for a lane
    /// that was not known, and gets the lane's position once it is read
    /// even if the lane has no event to send.
    id_sent: bool,
}

/// What a lane's completed read gives the stream.
pub struct Completed {
    /// To send, in order: gap notice, replay, held live events it did not
    /// contain, each event followed by the stream's id.
    pub frames: Vec<Frame>,
    /// How many of the frames are events.
    pub events: usize,
    /// Events of the lane's history among them (`events_replayed_total`).
    pub replayed: usize,
    /// The client's resume, counted once, when its first lane completes:
    /// `ResumeReplayed`, `ResumeGap` or `ResumeInvalid`.
    pub resume: Option<Counter>,
    /// A reply that could not be read (logged by the caller).
    pub problem: Option<String>,
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
                    Some(Some(p)) => p[i].map_or(Resume::Fresh, Resume::After),
                };
                Lane {
                    name,
                    position: match start {
                        Resume::After(p) => p,
                        _ => 0,
                    },
                    known: matches!(start, Resume::After(_)),
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
            // A resuming client holds an id (its own, or one we cannot read).
            id_sent: resume.is_some(),
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
    fn id(&self) -> String {
        let names: Vec<&[u8]> = self.lanes.iter().map(|l| &*l.name).collect();
        let positions: Vec<Option<u64>> = self
            .lanes
            .iter()
            .map(|l| l.known.then_some(l.position))
            .collect();
        position::encode(&names, &positions)
    }

    /// The stream's id, for an event that carries it to the client.
    pub fn announce_id(&mut self) -> String {
        self.id_sent = true;
        self.id()
    }

    /// The id line that follows an event's body (or, alone, an id-only
    /// block: it moves the browser's `Last-Event-ID` and dispatches nothing).
    fn id_frame(&mut self) -> Frame {
        Frame::Shared(
            format!("id: {}\n\n", self.announce_id())
                .into_bytes()
                .into(),
        )
    }

    /// A lane's shard lost and regained its subscriber: read what was
    /// missed, after the barrier `token`.
    pub fn restart(&mut self, lane: usize, token: u64) {
        let generation = self.next_generation();
        if let Some(l) = self.lanes.get_mut(lane) {
            if l.phase == LanePhase::Live {
                l.start = Some(l.resume_point());
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
    /// returns the indices of the lanes to read (after a barrier) and the
    /// bytes that removed lanes held (owed no more).
    pub fn change(&mut self, channels: Vec<Box<[u8]>>) -> (Vec<usize>, usize) {
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
                        lane.generation = self.next_generation();
                        lane.phase = LanePhase::AwaitingBarrier(0);
                        fresh.push(i);
                    }
                    self.lanes.push(lane);
                }
                None => {
                    // Read even without sse_history_start: the channel's
                    // sequence is the lane's position from then on.
                    fresh.push(i);
                    let generation = self.next_generation();
                    self.lanes.push(Lane {
                        name,
                        position: 0,
                        known: false,
                        start: Some(Resume::Fresh),
                        phase: LanePhase::AwaitingBarrier(0),
                        generation,
                        held: Vec::new(),
                    });
                }
            }
        }
        // Removed lanes: their held events will never be sent.
        let dropped = old.iter().flat_map(|l| &l.held).map(|(_, f)| f.len()).sum();
        (fresh, dropped)
    }

    /// A lane waits for the barrier `token` on its shard before its read.
    pub fn await_barrier(&mut self, lane: usize, token: u64) {
        let generation = self.next_generation();
        if let Some(l) = self.lanes.get_mut(lane) {
            // A live lane reads from where it is.
            l.start.get_or_insert(l.resume_point());
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
        if let Some(start) = l.start {
            out.extend(history::range_read(stream, start, start_last));
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
        l.known = true;
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
    ) -> Completed {
        let start_last = self.start_last;
        // Each replayed event is followed by the stream's id line.
        let id_len = self.id().len() + "id: \n\n".len();
        let Some(l) = self.lanes.get_mut(lane) else {
            return Completed {
                frames: Vec::new(),
                events: 0,
                replayed: 0,
                resume: None,
                problem: None,
            };
        };
        let start = l.start.take().unwrap_or(l.resume_point());
        // What the client holds for this lane: unless an event moves it, an
        // id-only line tells it where the lane ends up.
        let client_holds = (l.known, l.position);
        let mut problem = None;
        let mut failed = false;
        let (seq, entries) = match value {
            Value::Array(Some(replies)) if !replies.is_empty() => {
                let seq = match &replies[0] {
                    Value::Bulk(None) => 0,
                    reply => reply
                        .as_bytes()
                        .and_then(crate::envelope::parse_id)
                        .unwrap_or_else(|| {
                            // Not a sequence to number from: a failed read.
                            failed = true;
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
        let name_len = l.name.len();
        let (events, cut) = history::deliverable(events, user, max_message, budget, |_, e| {
            // What the event and its id line take on the wire, near enough.
            e.data.len() + name_len + id_len + 32
        });
        gap |= !cut.is_empty();
        let replayed = events.len();
        let name = l.name.clone();
        let held = std::mem::take(&mut l.held);
        match start {
            Resume::After(since) => l.position = l.position.max(since.min(seq)),
            Resume::Fresh | Resume::Malformed => l.position = l.position.max(seq),
        }
        l.phase = LanePhase::Live;
        l.known |= !failed;
        let final_position = l.position;

        let mut out = Vec::with_capacity(2 * (events.len() + held.len()) + 2);
        let mut sent = 0;
        if gap {
            out.push(gap_frame(scratch, &[&name]));
        }
        // Each event is followed by the stream's id with this lane at it.
        let emit = |lanes: &mut Lanes, id: u64, body: Frame, out: &mut Vec<Frame>| {
            if let Some(l) = lanes.lanes.get_mut(lane) {
                l.position = id;
                l.known = true;
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
            sent += 1;
        }
        // Held events the replay did not contain, and not older than it
        // (they are in id order after it: they came after the read).
        let newest_planned = planned.last().copied().unwrap_or(0);
        for (id, body) in held {
            if id <= before || id <= newest_planned {
                continue;
            }
            emit(self, id, body, &mut out);
            sent += 1;
        }
        if let Some(l) = self.lanes.get_mut(lane) {
            l.position = l.position.max(final_position);
            // Into a new epoch (a failover) from where the client was (held
            // live events are not in the read's chain).
            let crossed = history::crosses_epoch(
                Some(start),
                seq,
                before,
                planned.first().copied(),
                l.position,
            );
            if !gap && crossed {
                out.insert(0, gap_frame(scratch, &[&name]));
                gap = true;
            }
        }
        // No event told the client where the lane is now (it held `-`, or
        // Redis' sequence went back): an id-only block does.
        let moved = self
            .lanes
            .get(lane)
            .is_some_and(|l| (l.known, l.position) != client_holds);
        if moved && sent == 0 && self.id_sent {
            out.push(self.id_frame());
        }
        Completed {
            frames: out,
            events: sent,
            replayed,
            resume: self.count_resume(gap),
            problem,
        }
    }

    /// The client's resume, once, when its first lane completes.
    fn count_resume(&mut self, gap: bool) -> Option<Counter> {
        if self.counted {
            return None;
        }
        self.counted = true;
        Some(if self.malformed {
            Counter::ResumeInvalid
        } else if gap {
            Counter::ResumeGap
        } else {
            Counter::ResumeReplayed
        })
    }
}

/// An event's body for a cluster history stream: `event:` and `data:`
/// lines without the blank line, which comes after the stream's own id.
pub fn body_frame(scratch: &mut Vec<u8>, channel: &[u8], data: &[u8]) -> Frame {
    scratch.clear();
    frame::encode_event(scratch, Some(channel), None, data);
    scratch.pop();
    Frame::Shared(scratch.as_slice().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Box<[u8]>> {
        list.iter().map(|n| n.as_bytes().into()).collect()
    }

    fn leak(s: String) -> &'static [u8] {
        Box::leak(s.into_boxed_str()).as_bytes()
    }

    /// A lane read's EXEC reply: the channel's sequence, and its entries
    /// `(id, prev)` newest first (as XREVRANGE gives them), each with
    /// `data` as its payload.
    fn reply(seq: u64, entries: &[(u64, u64)], data: &'static [u8]) -> Value<'static> {
        let items = entries
            .iter()
            .rev()
            .map(|&(id, prev)| {
                Value::Array(Some(vec![
                    Value::Bulk(Some(leak(format!("{id}-0")))),
                    Value::Array(Some(vec![
                        Value::Bulk(Some(b"d")),
                        Value::Bulk(Some(data)),
                        Value::Bulk(Some(b"p")),
                        Value::Bulk(Some(leak(prev.to_string()))),
                    ])),
                ]))
            })
            .collect();
        Value::Array(Some(vec![
            Value::Bulk(Some(leak(seq.to_string()))),
            Value::Array(Some(items)),
        ]))
    }

    /// Drives a lane through its barrier and read, and completes it.
    fn read(lanes: &mut Lanes, lane: usize, value: &Value<'_>, budget: usize) -> Completed {
        lanes.await_barrier(lane, 1);
        assert!(lanes.awaits(lane, 1));
        lanes.requests(lane, "sse");
        let mut scratch = Vec::new();
        lanes.complete(lane, value, None, &mut scratch, budget, 1 << 20)
    }

    fn text(frames: &[Frame]) -> String {
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(f.bytes()).into_owned())
            .collect()
    }

    fn body(channel: &str, data: &str) -> Frame {
        body_frame(&mut Vec::new(), channel.as_bytes(), data.as_bytes())
    }

    /// The XREVRANGE of a lane's read, if it has one: its lower bound.
    fn reads_after(lanes: &mut Lanes, lane: usize) -> Option<String> {
        let reads = lanes.requests(lane, "sse");
        reads
            .get(1)
            .map(|r| String::from_utf8_lossy(&r[3]).into_owned())
    }

    #[test]
    fn a_lane_not_read_yet_is_unknown_in_the_id_not_zero() {
        let ab = names(&["a", "b"]);
        let mut lanes = Lanes::new(ab.clone(), None, 0);
        assert!(lanes.id().ends_with(".-.-"), "{}", lanes.id());
        // Lane a is read (sequence 7, nothing to replay): no id was sent
        // yet, so nothing to tell the client.
        let done = read(&mut lanes, 0, &reply(7, &[], b"x"), 1 << 20);
        assert!(done.frames.is_empty());
        assert_eq!(done.resume, None, "a new stream is no resume");
        // A live event on a while b is still being read: b stays `-`.
        let mut scratch = Vec::new();
        let frames = lanes.live(0, 8, body("a", "x"), &mut scratch);
        let sent = text(&frames);
        assert!(sent.ends_with(".8.-\n\n"), "{sent}");
        // A reconnect with that id starts b afresh, a after 8.
        let id = lanes.id();
        let mut again = Lanes::new(ab.clone(), Some(id.as_bytes()), 0);
        assert_eq!(reads_after(&mut again, 0).as_deref(), Some("(8-0"));
        assert_eq!(reads_after(&mut again, 1), None);
        // Lane b is read, quiet (sequence 3): an id-only block tells the
        // client where b is, so that a reconnect does not miss b's next
        // events nor replay its past.
        let done = read(&mut lanes, 1, &reply(3, &[], b"x"), 1 << 20);
        assert_eq!(done.events, 0);
        let sent = text(&done.frames);
        assert!(
            sent.starts_with("id: v") && sent.ends_with(".8.3\n\n"),
            "{sent}"
        );
        let mut again = Lanes::new(ab, Some(lanes.id().as_bytes()), 0);
        assert_eq!(reads_after(&mut again, 1).as_deref(), Some("(3-0"));
    }

    #[test]
    fn an_added_channel_is_unknown_until_read_then_announced() {
        let a = names(&["a"]);
        let resume = position::encode(&a, &[Some(5)]);
        let mut lanes = Lanes::new(a, Some(resume.as_bytes()), 0);
        let done = read(&mut lanes, 0, &reply(5, &[], b"x"), 1 << 20);
        assert!(done.frames.is_empty(), "{}", text(&done.frames));
        // Add b: the `sse-channels` event carries the new id, b unknown.
        let (fresh, dropped) = lanes.change(names(&["a", "b"]));
        assert_eq!((fresh, dropped), (vec![1], 0));
        let announced = lanes.announce_id();
        assert!(announced.ends_with(".5.-"), "{announced}");
        // A reconnect before b is read: b starts as a new channel (no
        // replay of its whole history), a after 5.
        let mut again = Lanes::new(names(&["a", "b"]), Some(announced.as_bytes()), 0);
        assert_eq!(reads_after(&mut again, 0).as_deref(), Some("(5-0"));
        assert_eq!(reads_after(&mut again, 1), None);
        // b is read at sequence 9 with nothing to send: the id moves.
        let done = read(&mut lanes, 1, &reply(9, &[(8, 7), (9, 8)], b"x"), 1 << 20);
        assert_eq!(done.events, 0, "{}", text(&done.frames));
        assert!(text(&done.frames).ends_with(".5.9\n\n"));
        // b's next event is sent with its id.
        let mut scratch = Vec::new();
        let sent = text(&lanes.live(1, 10, body("b", "y"), &mut scratch));
        assert!(sent.ends_with(".5.10\n\n"), "{sent}");
        assert!(lanes.live(1, 10, body("b", "y"), &mut scratch).is_empty());
    }

    #[test]
    fn a_lane_removed_while_it_replays_gives_back_what_it_held() {
        let mut lanes = Lanes::new(names(&["a", "b"]), None, 0);
        let mut scratch = Vec::new();
        let held = body("b", "held while b replays");
        let len = held.len();
        assert!(lanes.live(1, 4, held.clone(), &mut scratch).is_empty());
        assert!(lanes.live(1, 5, held, &mut scratch).is_empty());
        assert_eq!(lanes.held_bytes(1), 2 * len);
        let (fresh, dropped) = lanes.change(names(&["a"]));
        assert_eq!(dropped, 2 * len);
        // Lane a was not read yet: it is read again under its new index.
        assert_eq!(fresh, vec![0]);
        assert_eq!(lanes.lanes().len(), 1);
    }

    #[test]
    fn the_replay_budget_counts_each_events_id_line() {
        // Eight channels: each event's id line is longer than its body.
        let eight: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
        let eight: Vec<&str> = eight.iter().map(String::as_str).collect();
        let positions: Vec<Option<u64>> = vec![Some(100_000); 8];
        let resume = position::encode(&eight, &positions);
        let mut lanes = Lanes::new(names(&eight), Some(resume.as_bytes()), 0);
        let entries: Vec<(u64, u64)> = (100_001..=100_400).map(|id| (id, id - 1)).collect();
        let budget = 4_000;
        let done = read(&mut lanes, 0, &reply(100_400, &entries, b"x"), budget);
        let total: usize = done.frames.iter().map(Frame::len).sum();
        assert!(
            total <= budget,
            "{total} bytes sent for a budget of {budget}"
        );
        assert!(done.events > 20, "{} events", done.events);
        // The older events were cut: the client is told.
        assert!(text(&done.frames).starts_with("event: sse-gap\ndata: c0\n\n"));
        assert_eq!(done.resume, Some(Counter::ResumeGap));
    }

    #[test]
    fn a_failed_read_keeps_the_position_and_reports_a_gap() {
        let a = names(&["a"]);
        let resume = position::encode(&a, &[Some(41)]);
        let mut lanes = Lanes::new(a.clone(), Some(resume.as_bytes()), 0);
        let done = read(&mut lanes, 0, &Value::Error(b"EXECABORT"), 1 << 20);
        assert!(done.problem.is_some());
        assert!(text(&done.frames).starts_with("event: sse-gap\ndata: a\n\n"));
        assert_eq!(lanes.id(), resume);
        // A fresh lane whose read failed stays unknown.
        let mut fresh = Lanes::new(a, None, 0);
        read(&mut fresh, 0, &Value::Array(None), 1 << 20);
        assert!(fresh.id().ends_with(".-"), "{}", fresh.id());
    }

    #[test]
    fn an_unknown_lane_is_never_read_from_zero() {
        let mut lanes = Lanes::new(names(&["a"]), None, 0);
        // Its read fails (EXECABORT in a migration): it goes live, unknown.
        read(&mut lanes, 0, &Value::Error(b"EXECABORT"), 1 << 20);
        // Its shard's subscriber comes back: the catch-up is a fresh read.
        lanes.restart(0, 2);
        assert_eq!(reads_after(&mut lanes, 0), None);
        // A sequence that is no number is a failed read too.
        let bad = Value::Array(Some(vec![Value::Bulk(Some(b"x")), Value::Array(None)]));
        let done = read(&mut lanes, 0, &bad, 1 << 20);
        assert!(done.problem.is_some());
        assert!(lanes.id().ends_with(".-"), "{}", lanes.id());
    }

    #[test]
    fn a_resumed_client_learns_a_lane_it_held_as_unknown() {
        let ab = names(&["a", "b"]);
        let held = position::encode(&ab, &[Some(5), None]);
        let mut lanes = Lanes::new(ab, Some(held.as_bytes()), 0);
        let done = read(&mut lanes, 0, &reply(5, &[], b"x"), 1 << 20);
        assert!(done.frames.is_empty(), "a at 5, as the client holds");
        let done = read(&mut lanes, 1, &reply(9, &[], b"x"), 1 << 20);
        assert!(
            text(&done.frames).ends_with(".5.9\n\n"),
            "{}",
            text(&done.frames)
        );
    }

    #[test]
    fn a_client_ahead_of_redis_is_told_where_the_sequence_is() {
        // Redis lost the channel's sequence (100 -> 10): nothing to send,
        // but the client must not keep 100 (events 11..100 would be skipped
        // on its next resume).
        let a = names(&["a"]);
        let resume = position::encode(&a, &[Some(100)]);
        let mut lanes = Lanes::new(a, Some(resume.as_bytes()), 0);
        let done = read(&mut lanes, 0, &reply(10, &[], b"x"), 1 << 20);
        let sent = text(&done.frames);
        assert!(sent.starts_with("event: sse-gap\ndata: a\n\n"), "{sent}");
        assert!(sent.ends_with(".10\n\n"), "{sent}");
    }

    #[test]
    fn a_resume_replays_after_the_position_and_skips_held_duplicates() {
        let a = names(&["a"]);
        let resume = position::encode(&a, &[Some(2)]);
        let mut lanes = Lanes::new(a, Some(resume.as_bytes()), 0);
        let mut scratch = Vec::new();
        // 4 arrives live while the lane reads; the read contains it too.
        assert!(lanes.live(0, 4, body("a", "x"), &mut scratch).is_empty());
        assert!(lanes.live(0, 5, body("a", "x"), &mut scratch).is_empty());
        let done = read(&mut lanes, 0, &reply(4, &[(3, 2), (4, 3)], b"x"), 1 << 20);
        assert_eq!(done.events, 3);
        assert_eq!(done.replayed, 2);
        let sent = text(&done.frames);
        let ids: Vec<&str> = sent
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|id| id.rsplit('.').next().unwrap_or(""))
            .collect();
        assert_eq!(ids, ["3", "4", "5"]);
        assert!(!sent.contains("sse-gap"));
    }
}
