//! The direct transport: an HTTP/1.x stream whose request has been retired.
//!
//! An nginx request costs about 8 KB for as long as it lives (its pool holds
//! the request, header lists, variables, module contexts), and every write
//! through the output filters allocates chain links. An SSE response is one
//! endless body, so once its header is out nothing of the request is needed
//! again. After the content handler returns, a stream that qualifies
//! (HTTP/1.x, no TLS, no content encoding, nothing left in nginx's buffers)
//! lets nginx log and free the request, keeps the connection, and writes
//! its body itself: one `writev` per flush, the chunked framing added here,
//! the frames themselves referenced, never copied. What stays per
//! connection is nginx's connection (its small pool) and the stream.
//!
//! The stream ends as nginx would end it: with the last chunk when the end
//! is clean (shutdown, revocation), by closing otherwise.

use std::collections::VecDeque;
use std::mem::MaybeUninit;

use ngx::ffi::{
    ngx_add_timer, ngx_connection_t, ngx_del_timer, ngx_handle_read_event, ngx_handle_write_event,
    ngx_http_close_connection, ngx_msec_t, NGX_OK,
};

use sse_core::frame;

use super::Written;
use crate::frame::Frame;

/// How long a clean end may take to write the last bytes before the
/// connection is closed anyway (a timer that keeps an exiting worker until
/// then, as nginx's own send_timeout does).
const END_TIMEOUT_MS: ngx_msec_t = 5_000;
/// iovecs per writev.
const MAX_IOV: usize = 64;

/// One piece of the response body still to be written.
enum Piece {
    Frame(Frame),
    /// A chunk-size line or the final chunk: a few bytes of our own.
    Own {
        bytes: [u8; 24],
        len: u8,
    },
}

impl Piece {
    fn own(text: &[u8]) -> Piece {
        let mut bytes = [0u8; 24];
        let len = text.len().min(bytes.len());
        bytes[..len].copy_from_slice(&text[..len]);
        Piece::Own {
            bytes,
            len: len as u8,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Frame(f) => f.bytes(),
            Piece::Own { bytes, len } => &bytes[..*len as usize],
        }
    }
}

/// The chunk-size line for `size` bytes, formatted without allocating
/// (this runs once per delivery).
fn chunk_header(size: usize) -> Piece {
    let mut bytes = [0u8; 24];
    let mut line = [0u8; frame::CHUNK_SIZE_LINE_MAX];
    let len = frame::chunk_size_line(size, &mut line);
    bytes[..len].copy_from_slice(&line[..len]);
    Piece::Own {
        bytes,
        len: len as u8,
    }
}

pub struct Direct {
    pub c: *mut ngx_connection_t,
    chunked: bool,
    out: VecDeque<Piece>,
    /// Bytes of the first piece already written.
    offset: usize,
    /// The end is queued: close once written.
    pub ending: bool,
    /// nginx's `send_timeout` of the location: how long a client may take
    /// no bytes at all while some are waiting for it.
    send_timeout: ngx_msec_t,
}

impl Direct {
    pub fn new(c: *mut ngx_connection_t, chunked: bool, send_timeout: ngx_msec_t) -> Self {
        Direct {
            c,
            chunked,
            out: VecDeque::new(),
            offset: 0,
            ending: false,
            send_timeout,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Appends frames as one chunk; returns the framing bytes added.
    pub fn push(&mut self, frames: impl ExactSizeIterator<Item = Frame>, total: usize) -> usize {
        if frames.len() == 0 {
            return 0;
        }
        let mut overhead = 0;
        if self.chunked {
            let header = chunk_header(total);
            overhead += header.bytes().len() + 2;
            self.out.push_back(header);
        }
        self.out.extend(frames.map(Piece::Frame));
        if self.chunked {
            self.out.push_back(Piece::own(b"\r\n"));
        }
        overhead
    }

    /// Queues the end of the body (the last chunk).
    pub fn push_end(&mut self) {
        if self.chunked {
            self.out.push_back(Piece::own(b"0\r\n\r\n"));
        }
        self.ending = true;
    }

    /// Writes as much as the socket takes.
    ///
    /// # Safety
    /// `self.c` must be a live connection.
    pub unsafe fn write(&mut self) -> Written {
        let mut total = 0;
        // Filled up to `count` before each call (this runs once per
        // delivery: no zeroing of the whole array).
        let mut iov = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_IOV];
        loop {
            if self.out.is_empty() {
                // All out: the client is keeping up.
                // SAFETY: live connection (caller's contract).
                unsafe {
                    if !self.ending && (*(*self.c).write).timer_set() != 0 {
                        ngx_del_timer((*self.c).write);
                    }
                }
                return Written::Some(total);
            }
            let mut count = 0;
            let mut want = 0;
            for (slot, (i, piece)) in iov.iter_mut().zip(self.out.iter().enumerate()) {
                let bytes = if i == 0 {
                    &piece.bytes()[self.offset..]
                } else {
                    piece.bytes()
                };
                slot.write(libc::iovec {
                    iov_base: bytes.as_ptr() as *mut libc::c_void,
                    iov_len: bytes.len(),
                });
                want += bytes.len();
                count += 1;
            }
            // SAFETY: the first `count` iovecs are initialised and point into
            // pieces owned by `self.out`, alive for the duration of the call;
            // `fd` is the connection's socket.
            let n = unsafe {
                libc::writev(
                    (*self.c).fd,
                    iov.as_ptr() as *const libc::iovec,
                    count as libc::c_int,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                match err.kind() {
                    std::io::ErrorKind::WouldBlock => {
                        // SAFETY: live connection (caller's contract).
                        return unsafe { self.wait_writable(total) };
                    }
                    std::io::ErrorKind::Interrupted => continue,
                    _ => return Written::Error,
                }
            }
            let n = n as usize;
            total += n;
            // SAFETY: live connection.
            unsafe { (*self.c).sent += n as i64 };
            self.consume(n);
            if n < want {
                // SAFETY: live connection.
                return unsafe { self.wait_writable(total) };
            }
        }
    }

    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.out.front() else {
                break;
            };
            let left = front.bytes().len() - self.offset;
            if n >= left {
                n -= left;
                self.out.pop_front();
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }

    unsafe fn wait_writable(&mut self, total: usize) -> Written {
        // SAFETY: live connection (caller's contract).
        unsafe {
            (*(*self.c).write).set_ready(0);
            if ngx_handle_write_event((*self.c).write, 0) != NGX_OK as isize {
                return Written::Error;
            }
            if self.ending {
                if (*(*self.c).write).timer_set() == 0 {
                    ngx_add_timer((*self.c).write, END_TIMEOUT_MS);
                }
            } else if self.send_timeout > 0 && (total > 0 || (*(*self.c).write).timer_set() == 0) {
                // (Re)started on progress: it measures a client that takes
                // nothing, as nginx's send_timeout does.
                ngx_add_timer((*self.c).write, self.send_timeout);
            }
        }
        Written::Some(total)
    }

    /// Whether the client closed its side (reads and drops anything else).
    ///
    /// # Safety
    /// `self.c` must be a live connection.
    pub unsafe fn client_gone(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: reads into a local buffer from the connection's socket.
            let n = unsafe {
                libc::recv(
                    (*self.c).fd,
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n == 0 {
                return true;
            }
            if n < 0 {
                let err = std::io::Error::last_os_error();
                match err.kind() {
                    std::io::ErrorKind::WouldBlock => break,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => return true,
                }
            }
        }
        // SAFETY: live connection.
        unsafe {
            (*(*self.c).read).set_ready(0);
            ngx_handle_read_event((*self.c).read, 0) != NGX_OK as isize
        }
    }

    /// Closes the connection (and frees its pool).
    ///
    /// # Safety
    /// `self.c` must be a live connection; it is gone afterwards.
    pub unsafe fn close(&mut self) {
        // SAFETY: caller's contract; ngx_http_close_connection also deletes
        // the connection's timers and posted events.
        unsafe { ngx_http_close_connection(self.c) };
        self.out.clear();
    }
}
