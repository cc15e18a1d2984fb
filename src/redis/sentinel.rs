//! The Sentinel watch (`redis-sentinel://` URLs): one connection per worker
//! to one of the Sentinels (the next one after each failure) that asks for
//! the master of the service, then stays subscribed to `+switch-master` to
//! follow failovers as Sentinel announces them. The worker points its
//! subscriber and commands connections at whatever master this reports.
//!
//! The question and the subscription go in one write, which Sentinel
//! executes in one go: no announcement of its own can fall between them
//! (and RESP2 allows no question once subscribed). An address can still be
//! stale: a Sentinel that has not learnt of a failover yet, or one reached
//! after the watch lost its connection. The commands connection therefore
//! checks `ROLE` on connect; anything but a master makes the worker restart
//! this watch on the next Sentinel, which asks again.

use std::collections::VecDeque;

use sse_core::resp::{self, Value};

use super::connection::{Conversation, Protocol};

/// The channel on which Sentinels announce a new master.
const SWITCH_MASTER: &[u8] = b"+switch-master";

/// What the watch tells the worker.
pub trait SentinelSink {
    /// The service's master is at `ip:port` (as Sentinel reports it).
    fn master(&mut self, ip: &[u8], port: &[u8]);
}

#[derive(Clone, Copy, Debug)]
enum Pending {
    /// AUTH: an error means this Sentinel refused us.
    Internal,
    /// SENTINEL get-master-addr-by-name.
    Master,
    /// SUBSCRIBE +switch-master: its confirmation makes the watch up.
    Subscribe,
    /// A keepalive PING (answered `pong` in subscribe mode).
    Keepalive,
}

pub struct SentinelWatch {
    /// The monitored master's name.
    service: Vec<u8>,
    pending: VecDeque<Pending>,
}

impl SentinelWatch {
    pub fn new(service: &str) -> Self {
        SentinelWatch {
            service: service.as_bytes().to_vec(),
            pending: VecDeque::new(),
        }
    }

    /// A `+switch-master` announcement: `<name> <old ip> <old port> <new ip>
    /// <new port>`.
    fn switch<S: SentinelSink + ?Sized>(&self, payload: &[u8], sink: &mut S) {
        let fields: Vec<&[u8]> = payload.split(|&b| b == b' ').collect();
        if let [name, _, _, ip, port] = fields[..] {
            if name == self.service.as_slice() {
                sink.master(ip, port);
            }
        }
    }
}

impl Conversation for SentinelWatch {
    const LABEL: &'static str = "redis sentinel";

    fn keepalive(&mut self, out: &mut Vec<u8>) {
        resp::encode_command(out, &[b"PING"]);
        self.pending.push_back(Pending::Keepalive);
    }

    fn dropped(&mut self) {
        self.pending.clear();
    }

    fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

impl<S: SentinelSink + ?Sized> Protocol<S> for SentinelWatch {
    fn greet(&mut self, out: &mut Vec<u8>, auth: Option<&[Vec<u8>]>, _sink: &S) {
        if let Some(args) = auth {
            let mut command: Vec<&[u8]> = vec![b"AUTH"];
            command.extend(args.iter().map(Vec::as_slice));
            resp::encode_command(out, &command);
            self.pending.push_back(Pending::Internal);
        }
        resp::encode_command(
            out,
            &[&b"SENTINEL"[..], b"get-master-addr-by-name", &self.service],
        );
        self.pending.push_back(Pending::Master);
        resp::encode_command(out, &[b"SUBSCRIBE", SWITCH_MASTER]);
        self.pending.push_back(Pending::Subscribe);
    }

    fn reply(&mut self, value: &Value<'_>, sink: &mut S) -> Result<bool, String> {
        if let Value::Array(Some(items)) = value {
            if let [kind, channel, payload] = &items[..] {
                if kind.as_bytes() == Some(b"message") && channel.as_bytes() == Some(SWITCH_MASTER)
                {
                    if let Some(payload) = payload.as_bytes() {
                        self.switch(payload, sink);
                    }
                    return Ok(false);
                }
            }
        }
        let service = || String::from_utf8_lossy(&self.service).into_owned();
        match (self.pending.pop_front(), value) {
            (Some(_), Value::Error(msg)) => {
                Err(format!("answered \"{}\"", String::from_utf8_lossy(msg)))
            }
            (Some(Pending::Master), Value::Array(Some(items))) => match &items[..] {
                [ip, port] => match (ip.as_bytes(), port.as_bytes()) {
                    (Some(ip), Some(port)) => {
                        sink.master(ip, port);
                        Ok(false)
                    }
                    _ => Err("answered a malformed master address".into()),
                },
                _ => Err("answered a malformed master address".into()),
            },
            (Some(Pending::Master), _) => {
                Err(format!("does not know a master named \"{}\"", service()))
            }
            (Some(Pending::Subscribe), Value::Array(Some(items)))
                if items.first().and_then(Value::as_bytes) == Some(b"subscribe") =>
            {
                Ok(true)
            }
            (Some(Pending::Subscribe), _) => Err("did not confirm the subscription".into()),
            (Some(Pending::Internal | Pending::Keepalive), _) => Ok(false),
            (None, _) => Err("sent a reply to no request".into()),
        }
    }

    fn up(&mut self, _again: bool, _sink: &mut S) -> String {
        format!(
            ", following the master of \"{}\"",
            String::from_utf8_lossy(&self.service)
        )
    }
}
