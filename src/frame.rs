//! The bytes of one event as sent on the wire.

use std::rc::Rc;

/// The event that tells a client which requested channels it does not get:
/// dropped at admission (`sse_refused drop`) or refused by Redis (ACL).
/// Data: the names, comma-separated.
pub const REFUSED_EVENT: &[u8] = b"sse-refused";

/// An event formatted once and shared by every stream it goes to: a stream
/// keeps it alive until its bytes are written.
#[derive(Clone)]
pub enum Frame {
    Shared(Rc<[u8]>),
    Static(&'static [u8]),
}

impl Frame {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Frame::Shared(b) => b,
            Frame::Static(b) => b,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// A frame formatted into `scratch` (a reused buffer) by `encode`.
    pub fn encode(scratch: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) -> Frame {
        scratch.clear();
        encode(scratch);
        Frame::Shared(Rc::from(&scratch[..]))
    }
}
