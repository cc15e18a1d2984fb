//! The commands conversation: history reads as MULTI/EXEC transactions and
//! the PUBLISHes of live channel changes, replies matched to requests in
//! order. On connect it loads the
//! `sse_publish` function (a refusal is logged, not fatal: ops may load
//! it themselves).

use std::collections::VecDeque;

use ngx::ffi::NGX_LOG_WARN;
use ngx::ngx_log_error;
use sse_core::resp::{self, Value};

use super::connection::{Connection, Conversation, Protocol};
use crate::ngx_ext::cycle_log;

/// A history read, as the worker tags it: the stream and the stream's read
/// generation (replies to an abandoned read are ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub stream: u64,
    pub generation: u32,
    /// Redis Cluster: the lane (channel) the read is for.
    pub lane: Option<u32>,
}

/// What the commands connection needs from the worker.
pub trait CommandsSink {
    /// The connection is up: requests may be sent.
    fn commands_ready(&mut self);
    /// The reply to a request (the EXEC's array).
    fn reply(&mut self, request: Request, value: &Value<'_>);
    /// How many subscribers a tagged PUBLISH reached (`None`: Redis
    /// refused it).
    fn published(&mut self, tag: u64, receivers: Option<i64>);
    /// Redis Cluster: the answer to CLUSTER SLOTS.
    fn topology(&mut self, value: &Value<'_>);
    /// With Sentinel: the server Sentinel named as the master says it is
    /// not (ROLE): Sentinel should be asked again.
    fn not_master(&mut self);
}

/// What a reply on the commands connection answers.
#[derive(Clone, Copy, Debug)]
enum Pending {
    /// AUTH, MULTI, a queued command, a keepalive PING: an error means the
    /// connection is unusable.
    Internal,
    /// The greeting's PING: its answer makes the connection up.
    Ready,
    /// A command queued in a MULTI ("+QUEUED"). Refused (an ACL without
    /// the history keys), it makes the EXEC answer EXECABORT, which the
    /// request gets: its read fails (a gap), the connection stays.
    Queued,
    /// FUNCTION LOAD of redis/sse.lua.
    FunctionLoad,
    Request(Request),
    /// A PUBLISH; tagged when someone waits for its receiver count.
    Publish(Option<u64>),
    /// CLUSTER SLOTS.
    Topology,
    /// ROLE, with Sentinel: anything but `master` drops the connection.
    Role,
}

pub struct Commands {
    /// What each reply in flight answers, oldest first.
    pending: VecDeque<Pending>,
    /// The function library to load on connect.
    function: Option<&'static str>,
    /// The database of the history keys (`/db` of `sse_redis_url`).
    db: u32,
    /// With Sentinel: the prefix whose ids get a new epoch after a
    /// failover (`FCALL sse_epochs`, redis/sse.lua).
    epochs: Option<String>,
    /// Redis Cluster: ask for the topology when connected.
    pub cluster: bool,
    /// Requests whose connection broke before their reply, for the worker
    /// to send again.
    lost: Vec<Request>,
    /// Tagged PUBLISHes whose connection broke before their reply.
    lost_publishes: Vec<u64>,
    /// The last refusal of FUNCTION LOAD logged (each distinct one once).
    function_error: Vec<u8>,
    /// Whether an unanswered ROLE was logged (once per worker).
    role_warned: bool,
}

impl Commands {
    pub fn new(function: Option<&'static str>, db: u32, epochs: Option<String>) -> Self {
        Commands {
            pending: VecDeque::new(),
            function,
            db,
            epochs,
            cluster: false,
            lost: Vec::new(),
            lost_publishes: Vec::new(),
            function_error: Vec::new(),
            role_warned: false,
        }
    }
}

impl Conversation for Commands {
    const LABEL: &'static str = "redis (history)";

    fn label(&self) -> &'static str {
        if self.function.is_some() {
            Self::LABEL
        } else if self.cluster {
            "redis (topology)"
        } else {
            "redis (commands)"
        }
    }

    fn keepalive(&mut self, out: &mut Vec<u8>) {
        resp::encode_command(out, &[b"PING"]);
        self.pending.push_back(Pending::Internal);
    }

    fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn dropped(&mut self) {
        for pending in self.pending.drain(..) {
            match pending {
                Pending::Request(r) => self.lost.push(r),
                Pending::Publish(Some(tag)) => self.lost_publishes.push(tag),
                _ => {}
            }
        }
    }
}

impl<S: CommandsSink + ?Sized> Protocol<S> for Commands {
    fn greet(&mut self, out: &mut Vec<u8>, auth: Option<&[Vec<u8>]>, _sink: &S) {
        if let Some(args) = auth {
            let mut command: Vec<&[u8]> = vec![b"AUTH"];
            command.extend(args.iter().map(Vec::as_slice));
            resp::encode_command(out, &command);
            self.pending.push_back(Pending::Internal);
        }
        if self.db != 0 {
            resp::encode_command(out, &[&b"SELECT"[..], self.db.to_string().as_bytes()]);
            self.pending.push_back(Pending::Internal);
        }
        if self.epochs.is_some() {
            // With Sentinel, the address may be stale (a Sentinel that has
            // not learnt of a failover yet, an announcement the watch
            // missed while it reconnected): history reads and epochs need
            // the master itself.
            resp::encode_command(out, &[b"ROLE"]);
            self.pending.push_back(Pending::Role);
        }
        if let Some(code) = self.function {
            resp::encode_command(
                out,
                &[&b"FUNCTION"[..], b"LOAD", b"REPLACE", code.as_bytes()],
            );
            self.pending.push_back(Pending::FunctionLoad);
        }
        if let Some(prefix) = &self.epochs {
            resp::encode_command(
                out,
                &[&b"FCALL"[..], b"sse_epochs", b"0", prefix.as_bytes()],
            );
            self.pending.push_back(Pending::FunctionLoad);
        }
        if self.cluster {
            resp::encode_command(out, &[&b"CLUSTER"[..], b"SLOTS"]);
            self.pending.push_back(Pending::Topology);
        }
        resp::encode_command(out, &[b"PING"]);
        self.pending.push_back(Pending::Ready);
    }

    fn reply(&mut self, value: &Value<'_>, sink: &mut S) -> Result<bool, String> {
        match (self.pending.pop_front(), value) {
            (Some(Pending::Request(request)), _) => sink.reply(request, value),
            (Some(Pending::Topology), _) => sink.topology(value),
            (Some(Pending::Role), Value::Array(Some(items))) => {
                let role = items.first().and_then(Value::as_bytes).unwrap_or(b"?");
                if role != b"master" {
                    sink.not_master();
                    return Err(format!(
                        "is a {}, not the master Sentinel named; asking Sentinel again",
                        String::from_utf8_lossy(role)
                    ));
                }
            }
            (Some(Pending::Role), reply) => {
                // Not answered (ROLE is in @admin: a least-privilege ACL
                // user may not run it): trust Sentinel, as without the check.
                if !self.role_warned {
                    ngx_log_error!(
                        NGX_LOG_WARN,
                        cycle_log(),
                        "sse: redis did not answer ROLE ({}); cannot check that Sentinel's master is one (allow +role to the user)",
                        match reply {
                            Value::Error(msg) => String::from_utf8_lossy(msg).into_owned(),
                            _ => "an unexpected reply".to_string(),
                        }
                    );
                    self.role_warned = true;
                }
            }
            (Some(Pending::Publish(tag)), _) => {
                let receivers = match value {
                    Value::Integer(n) => Some(*n),
                    _ => None,
                };
                if let Value::Error(msg) = value {
                    ngx_log_error!(
                        NGX_LOG_WARN,
                        cycle_log(),
                        "sse: redis refused to publish a channel change (\"{}\")",
                        String::from_utf8_lossy(msg)
                    );
                }
                if let Some(tag) = tag {
                    sink.published(tag, receivers);
                }
            }
            (Some(Pending::FunctionLoad), Value::Error(msg)) => {
                if self.function_error != *msg {
                    ngx_log_error!(
                        NGX_LOG_WARN,
                        cycle_log(),
                        "sse: redis refused to load the sse_publish function (\"{}\"); load redis/sse.lua yourself",
                        String::from_utf8_lossy(msg)
                    );
                    self.function_error = msg.to_vec();
                }
            }
            (Some(Pending::Queued), Value::Error(msg)) => {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    cycle_log(),
                    "sse: redis refused a history read (\"{}\"); the stream gets sse-gap",
                    String::from_utf8_lossy(msg)
                );
            }
            (Some(Pending::Internal | Pending::Ready), Value::Error(msg)) => {
                return Err(format!("answered \"{}\"", String::from_utf8_lossy(msg)));
            }
            (Some(Pending::Ready), _) => return Ok(true),
            (Some(_), _) => {}
            (None, _) => return Err("sent a reply to no request".into()),
        }
        Ok(false)
    }

    fn up(&mut self, _again: bool, sink: &mut S) -> String {
        sink.commands_ready();
        String::new()
    }
}

impl Connection<Commands> {
    /// Queues `commands` as one MULTI/EXEC transaction, so that Redis runs
    /// them with nothing in between; the EXEC reply (an array of their
    /// replies) goes to [`CommandsSink::reply`] as `request`. Written by
    /// [`Connection::send`]. False if the connection is not up.
    pub fn transaction(&mut self, request: Request, commands: &[Vec<Vec<u8>>]) -> bool {
        if !self.is_ready() {
            return false;
        }
        let pending = &mut self.protocol.pending;
        resp::encode_command(&mut self.wbuf, &[b"MULTI"]);
        pending.push_back(Pending::Internal);
        for args in commands {
            resp::encode_command(&mut self.wbuf, args);
            pending.push_back(Pending::Queued);
        }
        resp::encode_command(&mut self.wbuf, &[b"EXEC"]);
        pending.push_back(Pending::Request(request));
        true
    }

    /// Queues a PUBLISH; with a `tag`, its receiver count goes to
    /// [`CommandsSink::published`]. Written by [`Connection::send`]. False
    /// if the connection is not up.
    pub fn publish(&mut self, channel: &[u8], payload: &[u8], tag: Option<u64>) -> bool {
        if !self.is_ready() {
            return false;
        }
        resp::encode_command(&mut self.wbuf, &[b"PUBLISH", channel, payload]);
        self.protocol.pending.push_back(Pending::Publish(tag));
        true
    }

    /// Redis Cluster: asks for the topology (answered to
    /// [`CommandsSink::topology`]). False if the connection is not up.
    pub fn ask_topology(&mut self) -> bool {
        if !self.is_ready() {
            return false;
        }
        resp::encode_command(&mut self.wbuf, &[&b"CLUSTER"[..], b"SLOTS"]);
        self.protocol.pending.push_back(Pending::Topology);
        self.write_out();
        true
    }

    /// Tagged PUBLISHes that lost their connection before their reply.
    pub fn take_lost_publishes(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.protocol.lost_publishes)
    }

    /// Writes the transactions queued with [`Connection::transaction`].
    pub fn send(&mut self) {
        self.write_out();
    }

    /// Requests that lost their connection before their reply.
    pub fn take_lost(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.protocol.lost)
    }
}
