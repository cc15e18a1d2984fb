//! The request transport: a stream's frames written through nginx's output
//! filters, as any response body is (HTTP/2, TLS, chunked encoding by
//! nginx). Buffers and chain links are recycled through nginx's free/busy
//! idiom, so a long-lived stream does not grow its request pool; the frames
//! themselves are referenced, never copied.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::ptr;

use ngx::ffi::{
    ngx_buf_t, ngx_chain_get_free_buf, ngx_chain_t, ngx_chain_update_chains,
    ngx_http_output_filter, ngx_http_request_t, ngx_int_t, NGX_ERROR,
};

use crate::frame::Frame;

/// The buffer tag that marks our buffers in the chains nginx hands back.
static BUF_TAG: u8 = 0;

fn buf_tag() -> *mut c_void {
    &BUF_TAG as *const u8 as *mut c_void
}

pub struct RequestWriter {
    pub r: *mut ngx_http_request_t,
    /// Frames whose buffers nginx has not finished sending, oldest first.
    in_flight: VecDeque<Frame>,
    /// Recycled chain links and buffers.
    free: *mut ngx_chain_t,
    busy: *mut ngx_chain_t,
}

impl RequestWriter {
    pub fn new(r: *mut ngx_http_request_t) -> Self {
        RequestWriter {
            r,
            in_flight: VecDeque::new(),
            free: ptr::null_mut(),
            busy: ptr::null_mut(),
        }
    }

    /// Whether nginx still holds some of our buffers.
    pub fn is_idle(&self) -> bool {
        self.busy.is_null() && self.in_flight.is_empty()
    }

    /// Hands `frames` to the output filters (flushed: events must leave
    /// now, whatever `postpone_output` says). Returns nginx's answer and
    /// the bytes of the frames nginx finished with.
    ///
    /// # Safety
    /// `self.r` must be a live request whose header was sent.
    pub unsafe fn write(&mut self, frames: impl Iterator<Item = Frame>) -> (ngx_int_t, usize) {
        let mut out: *mut ngx_chain_t = ptr::null_mut();
        let mut last: *mut *mut ngx_chain_t = &mut out;
        let mut last_buf: *mut ngx_buf_t = ptr::null_mut();
        for frame in frames {
            // SAFETY: the request is live (caller's contract); its pool
            // outlives the links taken from it.
            let cl = unsafe { ngx_chain_get_free_buf((*self.r).pool, &mut self.free) };
            if cl.is_null() {
                return (NGX_ERROR as ngx_int_t, 0);
            }
            let bytes = frame.bytes();
            // SAFETY: `cl` is a valid link with a buffer. The buffer points
            // into `frame`, which `in_flight` keeps alive until nginx has
            // sent it (release_sent).
            unsafe {
                let b = (*cl).buf;
                // Recycled buffers keep old flags: start from a clean one.
                ptr::write_bytes(b, 0, 1);
                (*b).start = bytes.as_ptr() as *mut u8;
                (*b).pos = (*b).start;
                (*b).last = (*b).start.add(bytes.len());
                (*b).end = (*b).last;
                (*b).set_memory(1);
                (*b).tag = buf_tag();
                *last = cl;
                last = &mut (*cl).next;
                last_buf = b;
            }
            self.in_flight.push_back(frame);
        }
        if !last_buf.is_null() {
            // SAFETY: the last buffer of the chain built above.
            unsafe { (*last_buf).set_flush(1) };
        }
        // SAFETY: the request is live and `out` is a well-formed chain of
        // our buffers (or empty: then nginx sends what it still holds).
        let rc = unsafe {
            let rc = ngx_http_output_filter(self.r, out);
            ngx_chain_update_chains(
                (*self.r).pool,
                &mut self.free,
                &mut self.busy,
                &mut out,
                buf_tag(),
            );
            rc
        };
        (rc, self.release_sent())
    }

    /// Drops the frames whose buffers nginx has sent and returns their
    /// bytes. Buffers are sent in order, so the ones still busy are the
    /// newest `in_flight` entries.
    fn release_sent(&mut self) -> usize {
        let mut still_busy = 0;
        let mut cl = self.busy;
        while !cl.is_null() {
            // SAFETY: `busy` is a well-formed chain maintained by
            // ngx_chain_update_chains.
            unsafe {
                if (*(*cl).buf).tag == buf_tag() {
                    still_busy += 1;
                }
                cl = (*cl).next;
            }
        }
        let mut released = 0;
        while self.in_flight.len() > still_busy {
            if let Some(frame) = self.in_flight.pop_front() {
                released += frame.len();
            }
        }
        released
    }
}
