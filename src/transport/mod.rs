//! How a stream's bytes reach its client: through nginx's output filters
//! ([`request`]: HTTP/2, TLS, and every stream until its takeover) or
//! written by the stream itself once nginx's request is retired
//! ([`direct`]: HTTP/1.x without TLS). Both take shared [`Frame`]s and
//! keep them alive until written; neither knows anything of streams.
//!
//! [`Frame`]: crate::frame::Frame

pub mod direct;
pub mod request;

pub use direct::Direct;
pub use request::RequestWriter;

/// What a write did.
pub enum Written {
    /// Bytes written; the socket may be full (the write event will tell).
    Some(usize),
    /// The connection is broken.
    Error,
}
