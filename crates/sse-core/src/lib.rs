//! The pure logic of nginx-sse, free of nginx and of I/O so that it can be
//! unit-tested with `cargo test`:
//!
//! - [`frame`]: the SSE wire format (events, retry, heartbeats);
//! - [`cluster`]: Redis Cluster hash slots, topology, redirections;
//! - [`channel`]: channel names and the channel lists clients ask for;
//! - [`pattern`]: channel patterns and grants (who may read what);
//! - [`position`]: Redis Cluster ids, one position per channel;
//! - [`lanes`]: a Redis Cluster history stream's per-channel replays;
//! - [`envelope`]: the optional envelope of a published message (audience);
//! - [`history`]: Last-Event-ID resume and gap detection over Redis Streams;
//! - [`resp`]: the Redis protocol (replies in, commands out);
//! - [`redis_url`]: the `sse_redis_url` value;
//! - [`session`]: live channel changes: tokens, change requests, routing;
//! - [`registry`]: which subscriber of a worker wants which channel;
//! - [`subscriber`]: the conversation on a worker's subscriber connection;
//! - [`backoff`]: reconnection delays;
//! - [`metrics`]: what the module counts, and its Prometheus exposition.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod channel;
pub mod cluster;
pub mod envelope;
pub mod frame;
pub mod history;
pub mod lanes;
pub mod metrics;
pub mod pattern;
pub mod position;
pub mod redis_url;
pub mod registry;
pub mod resp;
pub mod session;
pub mod subscriber;
