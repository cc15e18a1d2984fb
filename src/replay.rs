//! The replay side of one stream (`sse_history on`): what it is sent from
//! the history when it opens, the catch-up after the worker lost Redis, and
//! de-duplication by event id. (The history itself, its keys and its rules,
//! is `sse_core::history`; this is the nginx shell's use of it.)
//!
//! Steps, driven by the worker:
//! 1. `AwaitingBarrier`: the stream's channels are subscribed; a `PING
//!    <token>` on the subscriber connection tells when Redis has processed
//!    the SUBSCRIBE, so that nothing published after the history read below
//!    can be missed.
//! 2. `Queued` / `Fetching`: the history reads go out on the commands
//!    connection (GET seq; per channel XRANGE after the position, and HGET of
//!    its last id for gap detection).
//! 3. `Live`: the replay is sent, then the live events held meanwhile, minus
//!    those the replay already contained.
//!
//! While not live, live events are held (they count against
//! `sse_max_backlog`). Events carry their global id, so a stream delivers in
//! id order and drops any id it already sent.

use sse_core::frame;
use sse_core::history::{self, gap_frame, ChannelHistory, Plan, Resume};
use sse_core::resp::Value;

use std::collections::HashSet;

use crate::frame::Frame;
use crate::metrics;
use sse_core::metrics::Counter;

/// What each read of a replay's transaction (one MULTI/EXEC) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// GET of the global sequence.
    Seq,
    /// XRANGE / XREVRANGE of channel `i` of the stream's history.
    Range(usize),
    /// HGET of channel `i`'s last id.
    Last(usize),
}

/// What becomes of a live event on a stream that keeps history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    /// Its id was already sent (replayed, or received twice).
    Duplicate,
    Send,
    /// Send it after an `sse-gap` on every channel: it opens a new epoch.
    AfterGap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    AwaitingBarrier(u64),
    Queued,
    Fetching,
    Live,
}

pub struct Replay {
    /// Where the next read of the stream's channels starts: the client's
    /// resume, or the catch-up after the worker lost Redis. `None`: the
    /// channels are up to date (only `added` ones need reading).
    resume: Option<Resume>,
    /// Channels added by a live change, each from its own start, until
    /// their read is done.
    added: Vec<(Box<[u8]>, Resume)>,
    /// `sse_history_start`: last N per channel for a fresh subscriber.
    start_last: usize,
    /// Highest id sent to the client.
    last_id: u64,
    /// The global sequence when a fresh stream joined: a catch-up starts
    /// there if nothing was sent since.
    floor: u64,
    pub phase: Phase,
    /// Bumped at each restart of a replay, so late replies are ignored.
    pub generation: u32,
    held: Vec<(Option<u64>, Frame)>,
    /// What each read of the transaction is, in order.
    kinds: Vec<RequestKind>,
    /// The channels of the read in flight and where each starts
    /// (`RequestKind` indices point here).
    reading: Vec<(Box<[u8]>, Resume)>,
    /// The stream's concrete channels (patterns have no history).
    channels: Vec<Box<[u8]>>,
    /// The first replay (the client's resume) is done.
    completed: bool,
}

/// What the transaction's reply says, borrowed from it.
struct Reads<'a> {
    seq: u64,
    results: Vec<ChannelHistory<'a>>,
    /// A read failed: its channels are reported as a gap.
    failed: Vec<bool>,
    problem: Option<String>,
}

impl Replay {
    pub fn new(resume: Resume, start_last: usize, channels: Vec<Box<[u8]>>) -> Self {
        Replay {
            resume: Some(resume),
            added: Vec::new(),
            start_last,
            last_id: 0,
            floor: 0,
            // Not live: events are held until the first replay is done.
            phase: Phase::AwaitingBarrier(0),
            generation: 0,
            held: Vec::new(),
            kinds: Vec::new(),
            reading: Vec::new(),
            channels,
            completed: false,
        }
    }

    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    /// The worker lost and regained the subscription: read what was missed
    /// on every channel (a replay under way keeps its own start).
    pub fn restart(&mut self, token: u64) {
        let position = self.last_id.max(self.floor);
        self.resume.get_or_insert(Resume::After(position));
        self.catch_up(token);
    }

    /// Reads again once Redis has processed everything sent before the
    /// barrier `token` (subscriptions included); a read in flight is
    /// abandoned. Events are held meanwhile.
    pub fn catch_up(&mut self, token: u64) {
        self.generation = self.generation.wrapping_add(1);
        self.phase = Phase::AwaitingBarrier(token);
    }

    /// The stream's channels changed (a live change): `channels` are its
    /// concrete channels now; `added`, those to read from their own start
    /// before they go live. Returns whether a read is needed (then the
    /// caller sends a barrier and calls [`Replay::catch_up`]).
    pub fn change(&mut self, channels: Vec<Box<[u8]>>, added: Vec<(Box<[u8]>, Resume)>) -> bool {
        self.added.retain(|(c, _)| channels.contains(c));
        for (channel, start) in added {
            match start {
                Resume::Fresh if self.start_last == 0 => {}
                _ => {
                    self.added.retain(|(c, _)| *c != channel);
                    self.added.push((channel, start));
                }
            }
        }
        self.channels = channels;
        // A read in flight lists the old channels: it is abandoned and sent
        // again, so it must wait for the new barrier as well.
        !self.added.is_empty() || !self.is_live()
    }

    /// Back to the queue (the commands connection broke mid-read).
    pub fn requeue(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.phase = Phase::Queued;
    }

    /// The reads to send, as one transaction: every channel is read up to
    /// the same point of the global sequence (a read spread over time could
    /// miss an event published between two channels' reads, then drop its
    /// live copy as older than what was replayed).
    pub fn requests(&mut self, prefix: &str) -> Vec<Vec<Vec<u8>>> {
        let reads = self.reads(prefix);
        self.kinds = reads.iter().map(|(kind, _)| *kind).collect();
        self.phase = Phase::Fetching;
        reads.into_iter().map(|(_, args)| args).collect()
    }

    fn reads(&mut self, prefix: &str) -> Vec<(RequestKind, Vec<Vec<u8>>)> {
        self.reading = self
            .channels
            .iter()
            .filter_map(|channel| {
                let own = self.added.iter().find(|(c, _)| c == channel);
                let start = own.map(|(_, start)| *start).or(self.resume)?;
                Some((channel.clone(), start))
            })
            .collect();
        let mut out = vec![(
            RequestKind::Seq,
            vec![b"GET".to_vec(), format!("{prefix}:seq").into_bytes()],
        )];
        for (i, (channel, start)) in self.reading.iter().enumerate() {
            let key = [format!("{prefix}:h:").as_bytes(), channel].concat();
            if let Some(read) = history::range_read(key, *start, self.start_last) {
                out.push((RequestKind::Range(i), read));
            }
            if matches!(start, Resume::After(_)) {
                // Its last id, for the gap check.
                out.push((
                    RequestKind::Last(i),
                    vec![
                        b"HGET".to_vec(),
                        format!("{prefix}:last").into_bytes(),
                        channel.to_vec(),
                    ],
                ));
            }
        }
        out
    }

    /// Reads the transaction's reply (EXEC: one reply per read, in order).
    /// What cannot be read makes its channel count as a gap.
    fn read<'a>(&self, value: &Value<'a>) -> Reads<'a> {
        let n = self.reading.len();
        let mut reads = Reads {
            seq: 0,
            results: vec![ChannelHistory::default(); n],
            failed: vec![false; n],
            problem: None,
        };
        let replies = match value {
            Value::Array(Some(replies)) if replies.len() == self.kinds.len() => replies,
            _ => {
                reads.failed = vec![true; n];
                reads.problem = Some("history transaction failed".to_string());
                return reads;
            }
        };
        for (kind, reply) in self.kinds.iter().zip(replies) {
            match *kind {
                RequestKind::Seq => match reply {
                    Value::Bulk(None) => {}
                    _ => match reply.as_bytes().and_then(sse_core::envelope::parse_id) {
                        Some(seq) => reads.seq = seq,
                        None => reads.problem = Some("sequence is not a number".to_string()),
                    },
                },
                RequestKind::Range(i) => match history::parse_entries(reply) {
                    Ok(entries) => reads.results[i].entries = entries,
                    Err(e) => {
                        reads.failed[i] = true;
                        reads.problem = Some(e.to_string());
                    }
                },
                RequestKind::Last(i) => {
                    reads.results[i].last_id =
                        reply.as_bytes().and_then(sse_core::envelope::parse_id);
                }
            }
        }
        reads
    }

    /// Holds a live event until the replay is done.
    pub fn hold(&mut self, id: Option<u64>, frame: Frame) {
        self.held.push((id, frame));
    }

    /// What to do with a live event, noting its id.
    pub fn accept_live(&mut self, id: Option<u64>) -> Live {
        match id {
            Some(id) if id <= self.last_id => Live::Duplicate,
            Some(id) => {
                // The first id of a new epoch (a Redis failover, see
                // redis/sse.lua): events the old master issued and lost may
                // never have reached this stream, and no history can tell.
                let crossed = self.last_id > 0 && history::epoch(id) > history::epoch(self.last_id);
                self.last_id = id;
                if crossed {
                    Live::AfterGap
                } else {
                    Live::Send
                }
            }
            None => Live::Send,
        }
    }

    /// The `sse-gap` event naming every channel of the stream.
    pub fn gap_everywhere(&self, scratch: &mut Vec<u8>) -> Frame {
        let names: Vec<&[u8]> = self.channels.iter().map(|c| &**c).collect();
        gap_frame(scratch, &names)
    }

    /// All replies are in: the frames to send, in order (gap notice, replay,
    /// then held live events that are not duplicates). The replay keeps its
    /// newest events within `budget` bytes (`sse_max_backlog`); channels
    /// whose older events were cut are announced in the gap notice. Entries
    /// larger than `max_message` are skipped, as live messages are.
    /// Returns the frames and what was wrong with the reply, if anything.
    pub fn complete(
        &mut self,
        value: &Value<'_>,
        user: Option<&[u8]>,
        scratch: &mut Vec<u8>,
        budget: usize,
        max_message: usize,
    ) -> (Vec<Frame>, Option<String>) {
        let Reads {
            seq,
            results,
            failed,
            problem,
        } = self.read(value);
        let reading = std::mem::take(&mut self.reading);
        let stream_start = self.resume.take();
        // A change that came after this read was sent abandoned it (new
        // generation): what was being added is what this reply holds.
        self.added.clear();

        let starts = results
            .into_iter()
            .zip(&reading)
            .map(|(history, (_, start))| (history, *start))
            .collect();
        let Plan {
            mut gaps, events, ..
        } = history::plan_each(seq, self.start_last, starts);
        for (i, failed) in failed.iter().enumerate() {
            if *failed && !gaps.contains(&i) {
                gaps.push(i);
            }
        }
        if matches!(stream_start, Some(Resume::After(since)) if since > seq) {
            // Redis' sequence is behind this stream's position (Redis lost
            // its data, or the id came from elsewhere): the gap said so, and
            // what comes next is numbered from Redis' position on.
            self.last_id = seq;
            self.floor = seq;
        }
        // What the browser holds as its last id. Channels read from the
        // stream's position only hold newer ids; a channel added with an
        // older `last_event_id` may replay older ones, which it never had.
        let sent_before = self.last_id;
        let planned: HashSet<u64> = events.iter().map(|(_, e)| e.id).collect();
        if let Some((_, newest)) = events.last() {
            self.last_id = self.last_id.max(newest.id);
        }
        let (events, cut) = history::deliverable(events, user, max_message, budget, |i, e| {
            // What the frame takes on the wire, near enough.
            e.data.len() + reading[i].0.len() + 32
        });
        for i in cut {
            if !gaps.contains(&i) {
                gaps.push(i);
            }
        }
        gaps.sort_unstable();
        metrics::count(Counter::EventsReplayed, events.len() as u64);
        if !self.completed {
            // A client's resume (catch-ups after a Redis loss are not).
            let outcome = match stream_start {
                None | Some(Resume::Fresh) => None,
                Some(Resume::Malformed) => Some(Counter::ResumeInvalid),
                Some(Resume::After(_)) if gaps.is_empty() => Some(Counter::ResumeReplayed),
                Some(Resume::After(_)) => Some(Counter::ResumeGap),
            };
            if let Some(outcome) = outcome {
                metrics::count(outcome, 1);
            }
            self.completed = true;
        }

        // The replay, merged in id order with the live events held
        // meanwhile that it does not contain (events of pattern
        // subscriptions have no history: they are only live); held events
        // without an id (plain publishes) come last.
        let mut with_id: Vec<(u64, Frame)> = Vec::with_capacity(events.len() + self.held.len());
        for (i, entry) in events {
            scratch.clear();
            let id = entry.id.to_string();
            frame::encode_event(
                scratch,
                Some(&reading[i].0),
                Some(id.as_bytes()),
                entry.data,
            );
            with_id.push((entry.id, Frame::Shared(scratch.as_slice().into())));
        }
        let mut without_id = Vec::new();
        for (id, frame) in std::mem::take(&mut self.held) {
            match id {
                Some(id) if id <= sent_before || planned.contains(&id) => {}
                Some(id) => {
                    self.last_id = self.last_id.max(id);
                    with_id.push((id, frame));
                }
                None => without_id.push(frame),
            }
        }
        with_id.sort_by_key(|(id, _)| *id);
        let mut out = Vec::with_capacity(with_id.len() + without_id.len() + 2);
        // Into a new epoch (a Redis failover): the lost master's last
        // events may be missing on any channel (held live events count).
        let oldest = planned.iter().copied().min();
        if history::crosses_epoch(stream_start, seq, sent_before, oldest, self.last_id) {
            out.push(self.gap_everywhere(scratch));
        } else if !gaps.is_empty() {
            let names: Vec<&[u8]> = gaps.iter().map(|&i| &*reading[i].0).collect();
            out.push(gap_frame(scratch, &names));
        }
        // Only older ids were sent (an added channel's past): put the
        // browser's last id back where it was, with an id-only block (it
        // dispatches no event), so a reconnect resumes from there.
        let restore = with_id.last().is_some_and(|(id, _)| *id < sent_before);
        out.extend(with_id.into_iter().map(|(_, frame)| frame));
        if restore {
            out.push(Frame::Shared(
                format!("id: {sent_before}\n\n").into_bytes().into(),
            ));
        }
        out.extend(without_id);
        match stream_start {
            Some(Resume::After(since)) => self.last_id = self.last_id.max(since.min(seq)),
            Some(Resume::Fresh | Resume::Malformed) => self.floor = self.floor.max(seq),
            None => {}
        }
        self.phase = Phase::Live;
        (out, problem)
    }

    /// Bytes held, for backlog accounting.
    pub fn held_frames(&self) -> impl Iterator<Item = &Frame> {
        self.held.iter().map(|(_, f)| f)
    }
}
