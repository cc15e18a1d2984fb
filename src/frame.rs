//! The bytes of one event as sent on the wire ([`Frame`], from the pure
//! crate) and the module's own event names.

pub use sse_core::frame::Frame;

/// The event that tells a client which requested channels it does not get:
/// dropped at admission (`sse_refused drop`) or refused by Redis (ACL).
/// Data: the names, comma-separated.
pub const REFUSED_EVENT: &[u8] = b"sse-refused";
