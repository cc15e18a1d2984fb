//! The module's metrics: what is counted, and the Prometheus text exposition
//! (format 0.0.4) of a snapshot.
//!
//! Workers count into slots of plain `u64`s (the nginx shell keeps them in
//! shared memory as atomics, one slot per worker process, summed when
//! scraped); this module only names them and renders a sum. There is no
//! per-channel or per-user label: channel and user names are unbounded (a
//! label per value would grow the series without limit and leak who reads
//! what into the monitoring system).

use std::fmt::Write;

/// Monotonic counters (`*_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    StreamsOpened,
    ClosedClient,
    ClosedSlow,
    ClosedRevoked,
    ClosedReload,
    ClosedRefused,
    ClosedError,
    EventsSent,
    BytesSent,
    Heartbeats,
    Refused400,
    Refused403,
    Refused405,
    Refused503,
    ResumeReplayed,
    ResumeGap,
    ResumeInvalid,
    EventsReplayed,
    RedisMessages,
    SkippedMalformed,
    SkippedTooLarge,
    SkippedForeignPrefix,
    SubscriberReconnects,
    CommandsReconnects,
    /// Live channel changes (`sse_subscribe`), by outcome, counted by the
    /// worker that answered the request.
    ChangesApplied,
    ChangesRefused,
    ChangesUnknown,
    ChangesUnavailable,
    ChangesTimeout,
}

impl Counter {
    pub const COUNT: usize = Counter::ChangesTimeout as usize + 1;
}

/// Gauges: a worker's current values (zeroed when the worker goes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Gauge {
    StreamsHttp1,
    StreamsHttp2,
    Subscriptions,
    RedisSubscriptions,
    SubscriberUp,
    CommandsUp,
    SubscriberPending,
    CommandsPending,
}

impl Gauge {
    pub const COUNT: usize = Gauge::CommandsPending as usize + 1;
}

/// Why a stream ended, for `sse_streams_closed_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client went away (or nginx closed its request).
    Client,
    /// Over `sse_max_backlog`, or nothing taken for `send_timeout`.
    Slow,
    Revoked,
    /// Graceful shutdown: reload or quit.
    Reload,
    /// Redis refused one of its subscriptions.
    Refused,
    /// A write failed.
    Error,
}

impl CloseReason {
    pub fn counter(self) -> Counter {
        match self {
            CloseReason::Client => Counter::ClosedClient,
            CloseReason::Slow => Counter::ClosedSlow,
            CloseReason::Revoked => Counter::ClosedRevoked,
            CloseReason::Reload => Counter::ClosedReload,
            CloseReason::Refused => Counter::ClosedRefused,
            CloseReason::Error => Counter::ClosedError,
        }
    }
}

/// Summed values of every worker (gone ones included for counters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub counters: [u64; Counter::COUNT],
    pub gauges: [i64; Gauge::COUNT],
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            counters: [0; Counter::COUNT],
            gauges: [0; Gauge::COUNT],
        }
    }
}

impl Snapshot {
    pub fn counter(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }

    pub fn gauge(&self, g: Gauge) -> i64 {
        self.gauges[g as usize]
    }
}

/// One metric family: its name, type, help, and its series (labels, value).
struct Family<'a> {
    name: &'a str,
    kind: &'a str,
    help: &'a str,
    series: Vec<(&'a str, String)>,
}

/// The Prometheus text exposition (version 0.0.4) of `s`.
pub fn render(s: &Snapshot, version: &str, workers: usize) -> String {
    let c = |x: Counter| s.counter(x).to_string();
    let g = |x: Gauge| s.gauge(x).max(0).to_string();
    let families = [
        Family {
            name: "sse_build_info",
            kind: "gauge",
            help: "nginx-sse build; the value is always 1",
            series: vec![("", "1".into())],
        },
        Family {
            name: "sse_workers",
            kind: "gauge",
            help: "Worker processes currently counting (old ones included while they shut down)",
            series: vec![("", workers.to_string())],
        },
        Family {
            name: "sse_streams_open",
            kind: "gauge",
            help: "Open event streams",
            series: vec![
                (r#"transport="http1""#, g(Gauge::StreamsHttp1)),
                (r#"transport="http2""#, g(Gauge::StreamsHttp2)),
            ],
        },
        Family {
            name: "sse_streams_opened_total",
            kind: "counter",
            help: "Event streams opened",
            series: vec![("", c(Counter::StreamsOpened))],
        },
        Family {
            name: "sse_streams_closed_total",
            kind: "counter",
            help: "Event streams closed, by reason",
            series: vec![
                (r#"reason="client""#, c(Counter::ClosedClient)),
                (r#"reason="slow""#, c(Counter::ClosedSlow)),
                (r#"reason="revoked""#, c(Counter::ClosedRevoked)),
                (r#"reason="reload""#, c(Counter::ClosedReload)),
                (r#"reason="refused""#, c(Counter::ClosedRefused)),
                (r#"reason="error""#, c(Counter::ClosedError)),
            ],
        },
        Family {
            name: "sse_slow_client_drops_total",
            kind: "counter",
            help: "Streams closed because the client fell behind (sse_max_backlog, send_timeout)",
            series: vec![("", c(Counter::ClosedSlow))],
        },
        Family {
            name: "sse_subscriptions",
            kind: "gauge",
            help: "Channels and patterns subscribed by open streams (one per stream and channel)",
            series: vec![("", g(Gauge::Subscriptions))],
        },
        Family {
            name: "sse_redis_subscriptions",
            kind: "gauge",
            help: "Channels and patterns the workers subscribe to in Redis (one per worker and channel)",
            series: vec![("", g(Gauge::RedisSubscriptions))],
        },
        Family {
            name: "sse_events_sent_total",
            kind: "counter",
            help: "Events queued to clients (live and replayed)",
            series: vec![("", c(Counter::EventsSent))],
        },
        Family {
            name: "sse_bytes_sent_total",
            kind: "counter",
            help: "Bytes of stream bodies written to clients",
            series: vec![("", c(Counter::BytesSent))],
        },
        Family {
            name: "sse_heartbeats_total",
            kind: "counter",
            help: "Heartbeat comments sent to idle streams",
            series: vec![("", c(Counter::Heartbeats))],
        },
        Family {
            name: "sse_requests_refused_total",
            kind: "counter",
            help: "Stream requests answered with an error, by status",
            series: vec![
                (r#"status="400""#, c(Counter::Refused400)),
                (r#"status="403""#, c(Counter::Refused403)),
                (r#"status="405""#, c(Counter::Refused405)),
                (r#"status="503""#, c(Counter::Refused503)),
            ],
        },
        Family {
            name: "sse_channel_changes_total",
            kind: "counter",
            help: "Live channel change requests (sse_subscribe), by result",
            series: vec![
                (r#"result="applied""#, c(Counter::ChangesApplied)),
                (r#"result="refused""#, c(Counter::ChangesRefused)),
                (r#"result="unknown_session""#, c(Counter::ChangesUnknown)),
                (r#"result="unavailable""#, c(Counter::ChangesUnavailable)),
                (r#"result="timeout""#, c(Counter::ChangesTimeout)),
            ],
        },
        Family {
            name: "sse_resumes_total",
            kind: "counter",
            help: "Streams that resumed after Last-Event-ID, by outcome",
            series: vec![
                (r#"outcome="replayed""#, c(Counter::ResumeReplayed)),
                (r#"outcome="gap""#, c(Counter::ResumeGap)),
                (r#"outcome="invalid_id""#, c(Counter::ResumeInvalid)),
            ],
        },
        Family {
            name: "sse_events_replayed_total",
            kind: "counter",
            help: "Events sent from the history by replays and catch-ups",
            series: vec![("", c(Counter::EventsReplayed))],
        },
        Family {
            name: "sse_redis_messages_total",
            kind: "counter",
            help: "Messages received from Redis on subscribed channels",
            series: vec![("", c(Counter::RedisMessages))],
        },
        Family {
            name: "sse_redis_messages_skipped_total",
            kind: "counter",
            help: "Messages from Redis delivered to nobody, by reason",
            series: vec![
                (r#"reason="malformed""#, c(Counter::SkippedMalformed)),
                (r#"reason="too_large""#, c(Counter::SkippedTooLarge)),
                (r#"reason="foreign_prefix""#, c(Counter::SkippedForeignPrefix)),
            ],
        },
        Family {
            name: "sse_redis_up",
            kind: "gauge",
            help: "Workers whose Redis connection of this role is up",
            series: vec![
                (r#"role="subscriber""#, g(Gauge::SubscriberUp)),
                (r#"role="commands""#, g(Gauge::CommandsUp)),
            ],
        },
        Family {
            name: "sse_redis_reconnects_total",
            kind: "counter",
            help: "Redis connections established again after a loss",
            series: vec![
                (r#"role="subscriber""#, c(Counter::SubscriberReconnects)),
                (r#"role="commands""#, c(Counter::CommandsReconnects)),
            ],
        },
        Family {
            name: "sse_redis_pending_commands",
            kind: "gauge",
            help: "Commands sent to Redis and not yet answered",
            series: vec![
                (r#"role="subscriber""#, g(Gauge::SubscriberPending)),
                (r#"role="commands""#, g(Gauge::CommandsPending)),
            ],
        },
    ];
    let mut out = String::with_capacity(4096);
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, value) in f.series {
            let labels = if f.name == "sse_build_info" {
                format!("{{version=\"{}\"}}", escape(version))
            } else if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(out, "{}{} {}", f.name, labels, value);
        }
    }
    out
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_type_and_values() {
        let mut s = Snapshot::default();
        s.counters[Counter::StreamsOpened as usize] = 7;
        s.counters[Counter::ClosedSlow as usize] = 2;
        s.gauges[Gauge::StreamsHttp1 as usize] = 5;
        s.gauges[Gauge::RedisSubscriptions as usize] = -1; // a race: never shown negative
        let text = render(&s, "0.1.0", 2);
        assert!(text.contains("sse_build_info{version=\"0.1.0\"} 1\n"));
        assert!(text.contains("sse_streams_opened_total 7\n"));
        assert!(text.contains("sse_streams_closed_total{reason=\"slow\"} 2\n"));
        assert!(text.contains("sse_slow_client_drops_total 2\n"));
        assert!(text.contains("sse_streams_open{transport=\"http1\"} 5\n"));
        assert!(text.contains("sse_redis_subscriptions 0\n"));
        assert!(text.contains("sse_workers 2\n"));
        // Every sample line belongs to a family declared just before it.
        let mut declared = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared = rest.split(' ').next().unwrap_or("").to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&declared), "{line} after {declared}");
                let value = line.rsplit(' ').next().unwrap_or("");
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn close_reasons_have_their_counter() {
        for (reason, counter) in [
            (CloseReason::Client, Counter::ClosedClient),
            (CloseReason::Slow, Counter::ClosedSlow),
            (CloseReason::Revoked, Counter::ClosedRevoked),
            (CloseReason::Reload, Counter::ClosedReload),
            (CloseReason::Refused, Counter::ClosedRefused),
            (CloseReason::Error, Counter::ClosedError),
        ] {
            assert_eq!(reason.counter(), counter);
        }
    }
}
