//! A strict check of HTTP/1 request heads, between the socket and hyper.
//!
//! hyper is lenient where lenience lets two HTTP parsers frame the same bytes
//! differently (request smuggling): it accepts `Content-Length` together with
//! `Transfer-Encoding` (TE wins) and bare LF line endings. `H1Guard` finds the
//! end of each request head, checks it, and follows the body's framing
//! (length or chunks, trailers included) to find the next head of a
//! keep-alive connection. A bad head is never shown whole to hyper: the bytes
//! already passed on are followed by a byte invalid anywhere in a head, so
//! hyper answers its own 400 (in order, after any pipelined responses before
//! it) and closes the connection.
//!
//! It steps aside for an HTTP/2 connection (the preface) and for a connection
//! switched to another protocol (a `101` to an `Upgrade`, a `2xx` to a
//! `CONNECT`): after such a request, input is held until hyper writes the
//! response head, which says whether the bytes that follow are still HTTP/1.
//!
//! It also bounds how long a head may take (the listener's
//! `header_read_timeout`, against slowloris): a new connection's first head
//! from the connection's start, a later head from its first byte. An idle
//! keep-alive connection waiting for its next request is left to
//! `idle_timeout`. (hyper's own header timeout also runs while a keep-alive
//! connection idles, which closed it after `header_read_timeout`, and it arms
//! a timer for every request; a head that comes in one read needs none.)
//!
//! The checks are pure byte work, apart from the IO: `scanner.rs` follows
//! a connection's byte stream, `head.rs` judges one whole head, and this
//! file is the IO wrapper hyper reads through; `tests.rs` has the tests.

mod head;
mod scanner;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use tokio::time::Sleep;

pub use scanner::{Scanner, Verdict};

/// Sent to hyper in place of a bad head: `\x01` is invalid at any position
/// of a request head, so hyper's parser fails with a 400.
const POISON: &[u8] = b"\x01\r\n\r\n";
/// How much is read from the socket at once (on the stack).
const READ_CHUNK: usize = 8 * 1024;

// === H1Guard: the IO wrapper ===

/// What came of offering bytes to the scanner and to hyper's buffer.
enum Fed {
    /// Everything offered was scanned and passed, or hyper's buffer is full.
    Done,
    Hold,
    Poison(&'static str),
    Fail(&'static str),
}

/// The IO hyper reads HTTP/1 requests through; see the module doc.
pub struct H1Guard<T> {
    inner: T,
    scan: Scanner,
    /// Bytes read from the socket but not passed yet.
    stash: Vec<u8>,
    stash_pos: usize,
    /// The rest of the poison to give hyper, then end of file.
    poison: Option<&'static [u8]>,
    /// hyper's reader, parked while input is held.
    read_waker: Option<Waker>,
    /// `header_read_timeout`.
    head_timeout: Duration,
    /// Armed while a head is on its way (see the module doc).
    head_timer: Option<Pin<Box<Sleep>>>,
}

impl<T> H1Guard<T> {
    /// `limit`: the largest head hyper accepts. `enabled` false for a
    /// listener that serves HTTP/2 only. `head_timeout`: how long a head
    /// may take.
    pub fn new(inner: T, limit: usize, enabled: bool, head_timeout: Duration) -> Self {
        H1Guard {
            inner,
            scan: if enabled {
                Scanner::new(limit)
            } else {
                Scanner::off()
            },
            stash: Vec::new(),
            stash_pos: 0,
            poison: None,
            read_waker: None,
            head_timeout,
            head_timer: None,
        }
    }

    /// Bounds the connection's first head by `deadline` (its start plus
    /// `header_read_timeout`, the wait for its first bytes included) rather
    /// than from hyper's first read.
    pub fn first_head_by(mut self, deadline: tokio::time::Instant) -> Self {
        if self.scan.awaits_head() {
            self.head_timer = Some(Box::pin(tokio::time::sleep_until(deadline)));
        }
        self
    }

    /// Arms the head timer when a head is on its way, drops it otherwise
    /// (a guard that is off never awaits a head).
    fn watch_head(&mut self) {
        if !self.scan.awaits_head() {
            self.head_timer = None;
        } else if self.head_timer.is_none() {
            self.head_timer = Some(Box::pin(tokio::time::sleep(self.head_timeout)));
        }
    }

    /// The socket has nothing yet: Pending, or an error once the head timer
    /// has run out.
    fn poll_head_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(timer) = &mut self.head_timer else {
            return Poll::Pending;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.head_timer = None;
        tracing::debug!("request head not complete within header_read_timeout");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request head not complete within header_read_timeout",
        )))
    }

    fn saw_write(&mut self, bytes: &[u8]) {
        if self.scan.awaits_response() && !bytes.is_empty() && self.scan.saw_response(bytes) {
            if let Some(w) = self.read_waker.take() {
                w.wake();
            }
        }
    }
}

/// Offers `data` to the scanner and copies what passes into `out`; returns
/// how much of `data` was used.
fn feed(scan: &mut Scanner, data: &[u8], out: &mut ReadBufCursor<'_>) -> (usize, Fed) {
    let mut used = 0;
    while used < data.len() {
        let room = out.remaining();
        if room == 0 {
            break;
        }
        let end = data.len().min(used + room);
        match scan.scan(&data[used..end]) {
            Verdict::Pass(n) => {
                out.put_slice(&data[used..used + n]);
                used += n;
            }
            Verdict::Hold => return (used, Fed::Hold),
            Verdict::BadHead(r) => return (used, Fed::Poison(r)),
            Verdict::BadBody(r) => return (used, Fed::Fail(r)),
        }
    }
    (used, Fed::Done)
}

impl<T: Read + Unpin> Read for H1Guard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut out: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.watch_head();
        loop {
            if let Some(rest) = this.poison {
                // Nothing after the poison: hyper reads end of file.
                let n = rest.len().min(out.remaining());
                out.put_slice(&rest[..n]);
                this.poison = Some(&rest[n..]);
                return Poll::Ready(Ok(()));
            }
            if out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let (used, fed) = if this.stash_pos < this.stash.len() {
                let stash = std::mem::take(&mut this.stash);
                let (used, fed) = feed(&mut this.scan, &stash[this.stash_pos..], &mut out);
                this.stash = stash;
                this.stash_pos += used;
                if this.stash_pos == this.stash.len() {
                    // Pipelined input is rare: give the memory back.
                    this.stash = Vec::new();
                    this.stash_pos = 0;
                }
                (used, fed)
            } else if this.scan.is_off() {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            } else if this.scan.awaits_response() {
                this.read_waker = Some(cx.waker().clone());
                return Poll::Pending;
            } else {
                // Uninitialised: zeroing 8 KiB on every read showed in profiles.
                let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut rb = ReadBuf::uninit(&mut tmp);
                match Pin::new(&mut this.inner).poll_read(cx, rb.unfilled()) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Pending => return this.poll_head_timer(cx),
                    other => return other,
                }
                let read = rb.filled();
                if read.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let (used, fed) = feed(&mut this.scan, read, &mut out);
                if used < read.len() && matches!(fed, Fed::Done | Fed::Hold) {
                    this.stash.extend_from_slice(&read[used..]);
                    this.stash_pos = 0;
                }
                (used, fed)
            };
            this.watch_head();
            match fed {
                Fed::Done | Fed::Hold if used > 0 => return Poll::Ready(Ok(())),
                Fed::Done => continue,
                Fed::Hold => {
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Fed::Poison(reason) => {
                    tracing::debug!(reason, "refused an HTTP/1 request head");
                    this.stash = Vec::new();
                    this.stash_pos = 0;
                    this.poison = Some(POISON);
                    if used > 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                Fed::Fail(reason) => {
                    tracing::debug!(reason, "refused an HTTP/1 request body");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, reason)));
                }
            }
        }
    }
}

impl<T: Write + Unpin> Write for H1Guard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.saw_write(buf);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            self.saw_write(first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}
