//! History and resume: what a (re)connecting stream must be sent before it
//! goes live, computed from what Redis holds.
//!
//! Messages published with the `sse_publish` function (`redis/sse.lua`) get a
//! global sequence number N, shared by all channels; each channel's history
//! is a Redis Stream whose entries have id `N-0` and fields `d` (data), `p`
//! (the previous N on that channel) and optionally `t` (audience). Because N
//! orders events across channels, the one `Last-Event-ID` a browser keeps is
//! enough to resume a multiplexed stream: replay every entry with id > N on
//! each channel, merged by id.
//!
//! A gap (history no longer held) is detected exactly: the oldest replayed
//! entry's `p` is after the client's position, or nothing is held although
//! the channel's last id (`<prefix>:last`) is after it.

use std::fmt;

use crate::envelope;
use crate::frame::{self, Frame};
use crate::resp::Value;

/// The event that announces missing history; data: the channels, comma-separated.
pub const GAP_EVENT: &[u8] = b"sse-gap";

/// Ids of one epoch: after a Redis failover, `sse_publish` starts the next
/// multiple of this (redis/sse.lua), above any id the old master issued.
pub const EPOCH: u64 = 1_000_000_000_000;

/// The epoch of an id (0 until the first failover).
pub fn epoch(id: u64) -> u64 {
    id / EPOCH
}

/// Where a stream starts, from `Last-Event-ID` (header or query argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// No id: a new subscriber.
    Fresh,
    /// Resume after this event id.
    After(u64),
    /// An id we did not issue: start from newest, and say so (gap).
    Malformed,
}

impl Resume {
    /// The header wins over the query argument (a reconnecting EventSource
    /// sends the header, the page's first connection can only use the query).
    pub fn from_request(header: Option<&[u8]>, arg: Option<&[u8]>) -> Resume {
        match last_event_id(header, arg) {
            None => Resume::Fresh,
            Some(raw) => envelope::parse_id(raw).map_or(Resume::Malformed, Resume::After),
        }
    }
}

/// The id a client resumes from, as it sent it (trimmed): the header, or
/// failing that the query argument; `None` if neither is set.
pub fn last_event_id<'a>(header: Option<&'a [u8]>, arg: Option<&'a [u8]>) -> Option<&'a [u8]> {
    header
        .filter(|h| !h.is_empty())
        .or(arg.filter(|a| !a.is_empty()))
        .map(<[u8]>::trim_ascii)
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub id: u64,
    /// The previous id on the same channel (0: none).
    pub prev: u64,
    /// The event's data, borrowed from the reply it was read from (a replay
    /// reads up to the whole retention: copying it would double the peak).
    pub data: &'a [u8],
    pub audience: Option<Vec<&'a [u8]>>,
}

impl Entry<'_> {
    pub fn admits(&self, user: Option<&[u8]>) -> bool {
        envelope::audience_admits(self.audience.as_deref(), user)
    }
}

/// Why an XRANGE / XREVRANGE reply could not be read as a history. The
/// channel's history is then treated as lost (a gap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryError {
    /// Redis answered with an error reply (its text).
    Redis(String),
    /// The reply is neither an array nor an error.
    NotAnArray,
    /// An entry is not an array.
    EntryNotAnArray,
    /// An entry is not the pair `[id, fields]`.
    EntryShape,
    /// An entry's id is not a string.
    IdNotAString,
    /// An entry's id is not `N-0` (the entry was not written by `sse_publish`).
    ForeignId(String),
    /// An entry's field list has an odd length.
    OddFields,
    /// A field name or value is not a string.
    FieldNotAString,
    /// The `p` field (previous id) is not an event id.
    BadPrev,
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Redis(message) => f.write_str(message),
            HistoryError::NotAnArray => f.write_str("XRANGE reply is not an array"),
            HistoryError::EntryNotAnArray => f.write_str("XRANGE entry is not an array"),
            HistoryError::EntryShape => f.write_str("XRANGE entry is not [id, fields]"),
            HistoryError::IdNotAString => f.write_str("XRANGE entry id is not a string"),
            HistoryError::ForeignId(id) => {
                write!(f, "entry id \"{id}\" was not written by sse_publish")
            }
            HistoryError::OddFields => f.write_str("odd number of fields"),
            HistoryError::FieldNotAString => f.write_str("field is not a string"),
            HistoryError::BadPrev => f.write_str("bad \"p\" field"),
        }
    }
}

impl std::error::Error for HistoryError {}

/// Parses an XRANGE / XREVRANGE reply: `[[id, [field, value, ...]], ...]`.
pub fn parse_entries<'a>(value: &Value<'a>) -> Result<Vec<Entry<'a>>, HistoryError> {
    let items = match value {
        Value::Array(Some(items)) => items,
        Value::Array(None) => return Ok(Vec::new()),
        Value::Error(e) => {
            return Err(HistoryError::Redis(String::from_utf8_lossy(e).into_owned()))
        }
        _ => return Err(HistoryError::NotAnArray),
    };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(Some(pair)) = item else {
            return Err(HistoryError::EntryNotAnArray);
        };
        let [raw_id, Value::Array(Some(fields))] = pair.as_slice() else {
            return Err(HistoryError::EntryShape);
        };
        let raw_id = raw_id.as_bytes().ok_or(HistoryError::IdNotAString)?;
        let id = raw_id
            .strip_suffix(b"-0")
            .and_then(envelope::parse_id)
            .ok_or_else(|| HistoryError::ForeignId(String::from_utf8_lossy(raw_id).into_owned()))?;
        let mut entry = Entry {
            id,
            prev: 0,
            data: &[],
            audience: None,
        };
        for kv in fields.chunks(2) {
            let [k, v] = kv else {
                return Err(HistoryError::OddFields);
            };
            let (Some(k), Some(v)) = (k.as_bytes(), v.as_bytes()) else {
                return Err(HistoryError::FieldNotAString);
            };
            match k {
                b"d" => entry.data = v,
                b"p" => entry.prev = envelope::parse_id(v).ok_or(HistoryError::BadPrev)?,
                b"t" => entry.audience = Some(audience(v)),
                _ => {}
            }
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// The audience of an entry (`t` field). As on the live path, a list that
/// names an invalid user id is malformed as a whole and admits nobody: a
/// typo never widens an audience.
fn audience(field: &[u8]) -> Vec<&[u8]> {
    let users: Vec<&[u8]> = field.split(|&b| b == b',').collect();
    if users.iter().all(|u| envelope::valid_user(u)) {
        users
    } else {
        Vec::new()
    }
}

/// What Redis answered about one channel.
#[derive(Debug, Clone, Default)]
pub struct ChannelHistory<'a> {
    /// Entries after the position (any order).
    pub entries: Vec<Entry<'a>>,
    /// `HGET <prefix>:last <channel>`: the newest id ever published on it.
    pub last_id: Option<u64>,
}

/// The outcome for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    /// Indices of the channels whose history has a hole before the replay.
    pub gaps: Vec<usize>,
    /// `(channel index, entry)` to send, in id order.
    pub events: Vec<(usize, Entry<'a>)>,
    /// The position after the replay: ids up to this one are delivered.
    pub position: u64,
}

/// Plans the replay of a stream resuming after `since`. `seq` is the
/// current global sequence: an id beyond it was not issued by this Redis
/// (a foreign or stale id), which is reported as a gap on every channel.
pub fn plan_resume(since: u64, seq: u64, channels: Vec<ChannelHistory<'_>>) -> Plan<'_> {
    if since > seq {
        return Plan {
            gaps: (0..channels.len()).collect(),
            events: Vec::new(),
            position: seq,
        };
    }
    let mut gaps = Vec::new();
    let mut events = Vec::new();
    for (i, history) in channels.into_iter().enumerate() {
        let mut entries: Vec<Entry<'_>> = history
            .entries
            .into_iter()
            .filter(|e| e.id > since)
            .collect();
        entries.sort_by_key(|e| e.id);
        // Each entry names the previous id on its channel: a hole before
        // the first (trimmed history), or inside the chain (writes a failed
        // Redis master acknowledged and its successor never had: the
        // first entry of an epoch names the epoch's start, see sse.lua).
        let broken = entries.windows(2).any(|pair| pair[1].prev != pair[0].id);
        let gap = broken
            || match entries.first() {
                Some(first) => first.prev > since,
                None => history.last_id.is_some_and(|last| last > since),
            };
        if gap {
            gaps.push(i);
        }
        events.extend(entries.into_iter().map(|e| (i, e)));
    }
    events.sort_by_key(|(_, e)| e.id);
    let position = events.last().map_or(since, |(_, e)| e.id).max(since);
    Plan {
        gaps,
        events,
        position,
    }
}

/// Plans the start of a new subscriber that wants the last `n` messages of
/// each channel (`entries` are each channel's newest, any order).
pub fn plan_fresh(seq: u64, n: usize, channels: Vec<ChannelHistory<'_>>) -> Plan<'_> {
    let mut events = Vec::new();
    for (i, history) in channels.into_iter().enumerate() {
        let mut entries = history.entries;
        entries.sort_by_key(|e| e.id);
        let skip = entries.len().saturating_sub(n);
        events.extend(entries.into_iter().skip(skip).map(|e| (i, e)));
    }
    events.sort_by_key(|(_, e)| e.id);
    Plan {
        gaps: Vec::new(),
        events,
        position: seq,
    }
}

/// Plans a read in which each channel starts from its own position: the
/// stream's channels from the stream's (`Resume` of the request, or the
/// catch-up after Redis came back), channels added by a live change from
/// the id the client gave. A `Malformed` start is a gap on that channel.
/// The events come merged in id order, whatever their channel's start.
pub fn plan_each<'a>(
    seq: u64,
    start_last: usize,
    channels: Vec<(ChannelHistory<'a>, Resume)>,
) -> Plan<'a> {
    let mut gaps = Vec::new();
    let mut events = Vec::new();
    for (i, (history, start)) in channels.into_iter().enumerate() {
        let plan = match start {
            Resume::After(since) => plan_resume(since, seq, vec![history]),
            Resume::Fresh | Resume::Malformed => plan_fresh(seq, start_last, vec![history]),
        };
        if !plan.gaps.is_empty() || start == Resume::Malformed {
            gaps.push(i);
        }
        events.extend(plan.events.into_iter().map(|(_, e)| (i, e)));
    }
    events.sort_by_key(|(_, e)| e.id);
    let position = events.last().map_or(0, |(_, e)| e.id);
    Plan {
        gaps,
        events,
        position,
    }
}

/// Most entries read per channel in one replay.
pub const MAX_REPLAY: usize = 100_000;

/// The read of a channel's history `stream` (a Redis Stream key) for a
/// replay from `start`: after the position, or the last `start_last`
/// entries of a new stream (`None`: nothing to read). Newest first: if
/// COUNT cuts, the oldest go, and the gap check (the first entry's `p`)
/// reports it.
pub fn range_read(stream: Vec<u8>, start: Resume, start_last: usize) -> Option<Vec<Vec<u8>>> {
    let (from, count) = match start {
        Resume::After(since) => (format!("({since}-0"), MAX_REPLAY),
        Resume::Fresh | Resume::Malformed if start_last > 0 => ("-".to_string(), start_last),
        Resume::Fresh | Resume::Malformed => return None,
    };
    Some(vec![
        b"XREVRANGE".to_vec(),
        stream,
        b"+".to_vec(),
        from.into_bytes(),
        b"COUNT".to_vec(),
        count.to_string().into_bytes(),
    ])
}

/// The `sse-gap` event naming these channels.
pub fn gap_frame(scratch: &mut Vec<u8>, names: &[&[u8]]) -> Frame {
    Frame::encode(scratch, |out| {
        frame::encode_event(out, Some(GAP_EVENT), None, &names.join(&b","[..]))
    })
}

/// What of a planned replay is sent: the events the user may see and that
/// are not over `max_message` (as live messages are), then the newest of
/// those within `budget` bytes as `size` measures them on the wire
/// ([`newest_within`]: the channels cut are returned, to report as a gap).
pub fn deliverable<'a, F>(
    events: Vec<(usize, Entry<'a>)>,
    user: Option<&[u8]>,
    max_message: usize,
    budget: usize,
    size: F,
) -> (Vec<(usize, Entry<'a>)>, Vec<usize>)
where
    F: Fn(usize, &Entry<'a>) -> usize,
{
    let events = events
        .into_iter()
        .filter(|(_, e)| e.data.len() <= max_message && e.admits(user))
        .collect();
    newest_within(events, budget, size)
}

/// Whether a replay that leaves the client at `now` took it into a new
/// epoch (a Redis failover: the lost master's last events may be missing,
/// whatever the reads said). Measured from where the client was: `before`
/// (what this connection sent), or on a resume its own position (capped by
/// Redis' sequence `seq`); with nothing known (a resume from 0), from the
/// oldest event replayed.
pub fn crosses_epoch(
    start: Option<Resume>,
    seq: u64,
    before: u64,
    oldest_replayed: Option<u64>,
    now: u64,
) -> bool {
    let from = match start {
        Some(Resume::After(since)) => before.max(since.min(seq)),
        _ => before,
    };
    let from = if from > 0 {
        from
    } else {
        oldest_replayed.unwrap_or(0)
    };
    from > 0 && epoch(now) > epoch(from)
}

/// Keeps the newest events of a replay that fit in `budget` bytes, as
/// `size` measures them (the newest one always fits: a client that owes
/// nothing gets at least one event). Returns the kept events, still in id
/// order, and the channels whose older events were cut: those are reported
/// as a gap, so a client that resumes after a long absence gets the latest
/// events and a notice to refetch, instead of a replay without bound.
pub fn newest_within<'a, F>(
    events: Vec<(usize, Entry<'a>)>,
    budget: usize,
    size: F,
) -> (Vec<(usize, Entry<'a>)>, Vec<usize>)
where
    F: Fn(usize, &Entry<'a>) -> usize,
{
    let mut total = 0;
    let mut first_kept = events.len();
    for (i, (channel, entry)) in events.iter().enumerate().rev() {
        total += size(*channel, entry);
        if total > budget && first_kept < events.len() {
            break;
        }
        first_kept = i;
    }
    let mut events = events;
    let kept = events.split_off(first_kept);
    let mut cut: Vec<usize> = events.iter().map(|(channel, _)| *channel).collect();
    cut.sort_unstable();
    cut.dedup();
    (kept, cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp;

    fn e(id: u64, prev: u64) -> Entry<'static> {
        Entry {
            id,
            prev,
            data: format!("m{id}").into_bytes().leak(),
            audience: None,
        }
    }

    fn ch(entries: Vec<Entry<'static>>, last: Option<u64>) -> ChannelHistory<'static> {
        ChannelHistory {
            entries,
            last_id: last,
        }
    }

    #[test]
    fn a_replay_into_a_new_epoch_is_measured_from_where_the_client_was() {
        let next = EPOCH + 1;
        // A live stream at 7 replays into the next epoch.
        assert!(crosses_epoch(None, next, 7, Some(8), next));
        // A resume from 7: nothing sent yet on this connection.
        assert!(crosses_epoch(Some(Resume::After(7)), next, 0, None, next));
        // ... capped by Redis' sequence (the id came from further on).
        assert!(!crosses_epoch(
            Some(Resume::After(3 * EPOCH)),
            9,
            0,
            None,
            9
        ));
        // A resume from 0: from the oldest event replayed.
        assert!(crosses_epoch(
            Some(Resume::After(0)),
            next,
            0,
            Some(5),
            next
        ));
        assert!(!crosses_epoch(
            Some(Resume::After(0)),
            next,
            0,
            Some(next),
            next
        ));
        // A fresh stream has nowhere it was.
        assert!(!crosses_epoch(Some(Resume::Fresh), next, 0, None, next));
        // Within one epoch.
        assert!(!crosses_epoch(Some(Resume::After(7)), 9, 0, Some(8), 9));
    }

    #[test]
    fn range_reads_after_the_position_or_the_last_n() {
        let text = |r: Option<Vec<Vec<u8>>>| {
            r.map(|r| {
                r.iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        };
        assert_eq!(
            text(range_read(b"h".to_vec(), Resume::After(7), 5)).as_deref(),
            Some("XREVRANGE h + (7-0 COUNT 100000")
        );
        assert_eq!(
            text(range_read(b"h".to_vec(), Resume::Fresh, 5)).as_deref(),
            Some("XREVRANGE h + - COUNT 5")
        );
        assert_eq!(text(range_read(b"h".to_vec(), Resume::Malformed, 0)), None);
    }

    #[test]
    fn deliverable_filters_then_keeps_the_newest_within_the_budget() {
        let mut private = e(3, 2);
        private.audience = Some(vec![&b"u1"[..]]);
        let mut big = e(4, 3);
        big.data = &[b'x'; 100];
        let events = vec![
            (0, e(2, 1)),
            (0, private),
            (1, big),
            (1, e(5, 4)),
            (0, e(6, 2)),
        ];
        // u2 does not see 3, 4 is over max_message, and the budget holds
        // two events of 10 bytes: 2 is cut (channel 0 gets a gap).
        let (kept, cut) = deliverable(events, Some(b"u2"), 50, 20, |_, _| 10);
        let kept: Vec<u64> = kept.iter().map(|(_, e)| e.id).collect();
        assert_eq!(kept, [5, 6]);
        assert_eq!(cut, [0]);
    }

    fn ids(plan: &Plan) -> Vec<(usize, u64)> {
        plan.events.iter().map(|(c, e)| (*c, e.id)).collect()
    }

    #[test]
    fn last_event_id_sources() {
        assert_eq!(Resume::from_request(None, None), Resume::Fresh);
        assert_eq!(Resume::from_request(Some(b""), None), Resume::Fresh);
        assert_eq!(
            Resume::from_request(Some(b"42"), Some(b"7")),
            Resume::After(42)
        );
        assert_eq!(Resume::from_request(None, Some(b"7")), Resume::After(7));
        assert_eq!(Resume::from_request(Some(b" 9 "), None), Resume::After(9));
        for bad in [
            &b"abc"[..],
            b"1700000000-0",
            b"-1",
            b"1.5",
            b"99999999999999999999999",
        ] {
            assert_eq!(
                Resume::from_request(Some(bad), None),
                Resume::Malformed,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_break_in_the_chain_is_a_gap() {
        // 4 and 5 were acknowledged by a master that failed; its successor
        // went on from 3 in a new epoch whose first entry names the epoch.
        let e1 = EPOCH + 1;
        let plan = plan_resume(
            2,
            e1,
            vec![
                ch(vec![e(3, 2), e(e1, EPOCH)], Some(e1)),
                ch(vec![e(7, 6)], Some(7)),
            ],
        );
        assert_eq!(plan.gaps, [0, 1]);
        let intact = plan_resume(2, 9, vec![ch(vec![e(3, 2), e(9, 3)], Some(9))]);
        assert!(intact.gaps.is_empty());
    }

    #[test]
    fn each_channel_from_its_own_start() {
        // The stream is at 9 on channel 0; channel 1 is added from 4 (the
        // client's last id when it asked), channel 2 fresh with the last 1.
        let plan = plan_each(
            12,
            1,
            vec![
                (ch(vec![e(10, 9), e(12, 10)], Some(12)), Resume::After(9)),
                (
                    ch(vec![e(5, 3), e(8, 5), e(11, 8)], Some(11)),
                    Resume::After(4),
                ),
                (ch(vec![e(6, 1), e(7, 6)], Some(7)), Resume::Fresh),
            ],
        );
        assert_eq!(
            ids(&plan),
            [(1, 5), (2, 7), (1, 8), (0, 10), (1, 11), (0, 12)],
            "merged by id; the added channel's older ids included"
        );
        assert!(plan.gaps.is_empty());
        assert_eq!(plan.position, 12);
    }

    #[test]
    fn each_start_finds_its_own_gap() {
        let plan = plan_each(
            20,
            0,
            vec![
                (ch(vec![e(15, 14)], Some(15)), Resume::After(14)),
                // Added from 2, but its history starts after 10: a hole.
                (ch(vec![e(12, 10)], Some(12)), Resume::After(2)),
                (ch(Vec::new(), Some(3)), Resume::Malformed),
                // A start beyond Redis' sequence: not ours, a gap.
                (ch(Vec::new(), Some(3)), Resume::After(99)),
            ],
        );
        assert_eq!(plan.gaps, [1, 2, 3]);
        assert_eq!(ids(&plan), [(1, 12), (0, 15)]);
    }

    #[test]
    fn resume_merges_channels_by_id_without_gap() {
        // channel 0 had 2, 5, 9; channel 1 had 3, 4, 8; client saw up to 3.
        let plan = plan_resume(
            3,
            9,
            vec![
                ch(vec![e(9, 5), e(5, 2)], Some(9)),
                ch(vec![e(4, 3), e(8, 4)], Some(8)),
            ],
        );
        assert_eq!(ids(&plan), [(1, 4), (0, 5), (1, 8), (0, 9)]);
        assert!(plan.gaps.is_empty());
        assert_eq!(plan.position, 9);
    }

    #[test]
    fn trimmed_history_is_a_gap() {
        // The entry before 7 on this channel was 5, after the client's 3.
        let plan = plan_resume(3, 9, vec![ch(vec![e(7, 5), e(9, 7)], Some(9))]);
        assert_eq!(plan.gaps, [0]);
        assert_eq!(ids(&plan), [(0, 7), (0, 9)]);
        // Nothing held although the channel's last id is after the client's.
        let plan = plan_resume(
            3,
            9,
            vec![ch(vec![], Some(6)), ch(vec![], Some(2)), ch(vec![], None)],
        );
        assert_eq!(plan.gaps, [0]);
        assert_eq!(plan.position, 3);
    }

    #[test]
    fn foreign_position_is_a_gap_everywhere() {
        let plan = plan_resume(100, 9, vec![ch(vec![e(9, 0)], Some(9)), ch(vec![], None)]);
        assert_eq!(plan.gaps, [0, 1]);
        assert!(plan.events.is_empty());
        assert_eq!(plan.position, 9);
    }

    #[test]
    fn fresh_start_with_last_n() {
        let plan = plan_fresh(
            10,
            2,
            vec![
                ch(vec![e(10, 6), e(6, 2), e(2, 0)], Some(10)),
                ch(vec![e(7, 0)], Some(7)),
            ],
        );
        assert_eq!(ids(&plan), [(0, 6), (1, 7), (0, 10)]);
        assert_eq!(plan.position, 10);
    }

    #[test]
    fn parses_xrange_replies() {
        let raw = b"*2\r\n*2\r\n$3\r\n5-0\r\n*4\r\n$1\r\nd\r\n$5\r\nhello\r\n$1\r\np\r\n$1\r\n2\r\n\
                    *2\r\n$3\r\n9-0\r\n*6\r\n$1\r\nd\r\n$0\r\n\r\n$1\r\np\r\n$1\r\n5\r\n$1\r\nt\r\n$5\r\na,b,c\r\n";
        let (v, _) = resp::parse(raw).unwrap().unwrap();
        let entries = parse_entries(&v).unwrap();
        assert_eq!(
            entries[0],
            Entry {
                id: 5,
                prev: 2,
                data: b"hello",
                audience: None
            }
        );
        assert_eq!(entries[1].audience, Some(vec![&b"a"[..], b"b", b"c"]));
        assert!(
            entries[1].admits(Some(b"b"))
                && !entries[1].admits(Some(b"d"))
                && !entries[1].admits(None)
        );
        let (v, _) = resp::parse(b"*1\r\n*2\r\n$15\r\n1700000000000-0\r\n*0\r\n")
            .unwrap()
            .unwrap();
        assert!(parse_entries(&v).is_ok());
        let (v, _) = resp::parse(b"*0\r\n").unwrap().unwrap();
        assert_eq!(parse_entries(&v), Ok(vec![]));
        let (v, _) = resp::parse(b"*-1\r\n").unwrap().unwrap();
        assert_eq!(parse_entries(&v), Ok(vec![]));
    }

    #[test]
    fn unreadable_xrange_replies_say_why() {
        for (raw, error, message) in [
            (
                &b"-ERR no such key\r\n"[..],
                HistoryError::Redis("ERR no such key".into()),
                "ERR no such key",
            ),
            (
                b":3\r\n",
                HistoryError::NotAnArray,
                "XRANGE reply is not an array",
            ),
            (
                b"*1\r\n$1\r\nx\r\n",
                HistoryError::EntryNotAnArray,
                "XRANGE entry is not an array",
            ),
            (
                b"*1\r\n*1\r\n$3\r\n1-0\r\n",
                HistoryError::EntryShape,
                "XRANGE entry is not [id, fields]",
            ),
            (
                b"*1\r\n*2\r\n:1\r\n*0\r\n",
                HistoryError::IdNotAString,
                "XRANGE entry id is not a string",
            ),
            (
                b"*1\r\n*2\r\n$5\r\n1-123\r\n*0\r\n",
                HistoryError::ForeignId("1-123".into()),
                "entry id \"1-123\" was not written by sse_publish",
            ),
            (
                b"*1\r\n*2\r\n$3\r\n1-0\r\n*1\r\n$1\r\nd\r\n",
                HistoryError::OddFields,
                "odd number of fields",
            ),
            (
                b"*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nd\r\n:1\r\n",
                HistoryError::FieldNotAString,
                "field is not a string",
            ),
            (
                b"*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\np\r\n$2\r\n01\r\n",
                HistoryError::BadPrev,
                "bad \"p\" field",
            ),
        ] {
            let (v, _) = resp::parse(raw).unwrap().unwrap();
            assert_eq!(parse_entries(&v), Err(error.clone()), "{raw:?}");
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn replay_keeps_the_newest_within_budget_and_reports_the_cut() {
        let events = vec![(0, e(1, 0)), (1, e(2, 0)), (0, e(3, 1)), (2, e(4, 0))];
        let size = |_: usize, _: &Entry| 10;
        let (kept, cut) = newest_within(events.clone(), 25, size);
        assert_eq!(kept.iter().map(|(_, e)| e.id).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(cut, [0, 1]);
        let (kept, cut) = newest_within(events.clone(), 1000, size);
        assert_eq!(kept.len(), 4);
        assert!(cut.is_empty());
        // The newest event is kept even if it alone exceeds the budget.
        let (kept, cut) = newest_within(events, 5, size);
        assert_eq!(kept.iter().map(|(_, e)| e.id).collect::<Vec<_>>(), [4]);
        assert_eq!(cut, [0, 1]);
        let (kept, cut) = newest_within(Vec::new(), 5, size);
        assert!(kept.is_empty() && cut.is_empty());
    }

    #[test]
    fn a_malformed_audience_admits_nobody_in_a_replay() {
        let reply = |t: &'static [u8]| {
            Value::Array(Some(vec![Value::Array(Some(vec![
                Value::Bulk(Some(b"5-0")),
                Value::Array(Some(vec![
                    Value::Bulk(Some(b"d")),
                    Value::Bulk(Some(b"x")),
                    Value::Bulk(Some(b"p")),
                    Value::Bulk(Some(b"0")),
                    Value::Bulk(Some(b"t")),
                    Value::Bulk(Some(t)),
                ])),
            ]))]))
        };
        let ok = parse_entries(&reply(b"u1,u2")).unwrap();
        assert!(ok[0].admits(Some(b"u1")) && !ok[0].admits(Some(b"u3")));
        for bad in [&b"u1,a::b"[..], b"u1,", b"u1,:u", b"u 1"] {
            let entries = parse_entries(&reply(bad)).unwrap();
            assert!(!entries[0].admits(Some(b"u1")), "{bad:?}");
            assert!(!entries[0].admits(None));
        }
    }
}
