//! The subscriber conversation: the control channel and every key of the
//! worker's fan-out are subscribed, one key per (P)SUBSCRIBE, and every
//! reply is matched to its command (`sse_core::subscriber`), so a key that
//! Redis refuses (ACL) ends only the streams that asked for it. Messages
//! published while the connection was down are not delivered (pub/sub is
//! at most once); history streams catch up from the history instead.

use sse_core::envelope::CONTROL_CHANNEL;
use sse_core::resp::Value;
use sse_core::subscriber::{Fatal, Ping, Reply, Session};

use super::connection::{Connection, Conversation, Protocol};
use crate::ngx_ext::cycle_log;

/// What the subscriber connection needs from the worker.
pub trait SubscriberSink {
    /// A message on `channel`, received through `key` (the channel itself,
    /// or the pattern glob it matched).
    fn message(&mut self, key: &[u8], channel: &[u8], payload: &[u8]);
    /// Every fan-out key to subscribe when the connection comes up.
    fn keys(&self) -> Vec<Vec<u8>>;
    /// (Re)connected and (re)subscribed; messages published while it was
    /// down are missing.
    fn resubscribed(&mut self);
    /// Redis has processed everything sent before the barrier `token`.
    fn barrier(&mut self, token: u64);
    /// Redis refused to subscribe `key`; its streams must end.
    fn refused(&mut self, key: &[u8], reason: &[u8]);
    /// Redis Cluster: `key` must be subscribed on another node (it moved,
    /// or the node dropped it): ask for the topology and go there.
    fn moved(&mut self, key: &[u8]);
}

#[derive(Default)]
pub struct Subscriber {
    session: Session,
    /// A sharded subscriber of a Redis Cluster master: no control channel.
    shard: bool,
    /// The worker's own reserved channel (live channel changes), if used:
    /// subscribed for good, like the control channel.
    node_channel: Option<Vec<u8>>,
    /// Keys subscribed by the greeting, and how many Redis refused, for the
    /// log line once the connection is up.
    greeted_keys: usize,
    refused_keys: usize,
    up: bool,
}

impl Subscriber {
    pub fn new(node_channel: Option<Vec<u8>>) -> Self {
        Subscriber {
            node_channel,
            ..Subscriber::default()
        }
    }

    /// The sharded subscriber of one Redis Cluster master.
    pub fn shard() -> Self {
        Subscriber {
            session: Session::sharded(),
            shard: true,
            ..Subscriber::default()
        }
    }
}

impl Conversation for Subscriber {
    const LABEL: &'static str = "redis";

    fn keepalive(&mut self, out: &mut Vec<u8>) {
        self.session.ping(out, Ping::Keepalive);
    }

    fn dropped(&mut self) {
        self.session.reset();
        self.up = false;
    }

    fn label(&self) -> &'static str {
        if self.shard {
            "redis (shard)"
        } else {
            Self::LABEL
        }
    }

    fn in_flight(&self) -> usize {
        self.session.in_flight()
    }
}

impl<S: SubscriberSink + ?Sized> Protocol<S> for Subscriber {
    fn greet(&mut self, out: &mut Vec<u8>, auth: Option<&[Vec<u8>]>, sink: &S) {
        if let Some(args) = auth {
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            self.session.auth(out, &args);
        }
        let keys = sink.keys();
        self.greeted_keys = keys.len();
        self.refused_keys = 0;
        self.up = false;
        // The control channel first: revocations must work even before (and
        // without) any client.
        let mut all: Vec<&[u8]> = Vec::new();
        if !self.shard {
            all.push(CONTROL_CHANNEL.as_bytes());
            all.extend(self.node_channel.as_deref());
        }
        all.extend(keys.iter().map(Vec::as_slice));
        self.session.subscribe(out, &all);
        self.session.ping(out, Ping::Ready);
    }

    fn reply(&mut self, value: &Value<'_>, sink: &mut S) -> Result<bool, String> {
        match self.session.reply(value) {
            Ok(Reply::Message {
                subscription,
                channel,
                payload,
            }) => sink.message(subscription, channel, payload),
            Ok(Reply::Done) => {}
            Ok(Reply::Refused { key, reason }) => {
                if !self.up {
                    self.refused_keys += 1;
                }
                sink.refused(&key, reason);
            }
            Ok(Reply::Pong(Ping::Ready)) => return Ok(true),
            Ok(Reply::Pong(Ping::Barrier(token))) => sink.barrier(token),
            Ok(Reply::Pong(Ping::Keepalive)) => {}
            Ok(Reply::Moved { key } | Reply::Dropped { key }) => sink.moved(&key),
            Err(fatal @ Fatal::AuthRefused(_)) => return Err(format!("refused us: {fatal}")),
            Err(fatal) => return Err(format!("answered wrongly: {fatal}")),
        }
        Ok(false)
    }

    fn up(&mut self, again: bool, sink: &mut S) -> String {
        self.up = true;
        sink.resubscribed();
        let refused = match self.refused_keys {
            0 => String::new(),
            n => format!(", {n} refused"),
        };
        let verb = if again { "resubscribed" } else { "subscribed" };
        format!(
            ", {verb} {} channel(s) and pattern(s){refused}",
            self.greeted_keys
        )
    }
}

impl Connection<Subscriber> {
    /// Subscribes new keys. Before TCP is up there is nothing to do: the
    /// greeting subscribes every key of the fan-out.
    pub fn subscribe(&mut self, keys: &[&[u8]]) {
        if self.is_live() {
            for key in keys {
                sse_debug!(
                    cycle_log(),
                    "sse: subscribe \"{}\"",
                    String::from_utf8_lossy(key)
                );
            }
            self.protocol.session.subscribe(&mut self.wbuf, keys);
            self.write_out();
        }
    }

    pub fn unsubscribe(&mut self, keys: &[&[u8]]) {
        if self.is_live() {
            for key in keys {
                sse_debug!(
                    cycle_log(),
                    "sse: unsubscribe \"{}\"",
                    String::from_utf8_lossy(key)
                );
            }
            self.protocol.session.unsubscribe(&mut self.wbuf, keys);
            self.write_out();
        }
    }

    /// Sends a barrier PING; [`SubscriberSink::barrier`] is called with
    /// `token` once Redis has processed every command sent before it.
    /// False if the connection is not up (its coming up restarts replays).
    pub fn barrier(&mut self, token: u64) -> bool {
        if !self.is_ready() {
            return false;
        }
        self.protocol
            .session
            .ping(&mut self.wbuf, Ping::Barrier(token));
        self.write_out();
        true
    }
}
