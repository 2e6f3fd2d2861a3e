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

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use tokio::time::Sleep;

/// The start of the HTTP/2 connection preface, up to its blank line.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";
/// Sent to hyper in place of a bad head: `\x01` is invalid at any position
/// of a request head, so hyper's parser fails with a 400.
const POISON: &[u8] = b"\x01\r\n\r\n";
/// How much is read from the socket at once (on the stack).
const READ_CHUNK: usize = 8 * 1024;
/// More hex digits than a u64 chunk size holds.
const MAX_SIZE_DIGITS: u8 = 16;

// === Scanner: the byte-level state machine, no IO ===

/// Where the scanner is in the byte stream of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunk),
    /// After a request asking to switch protocols, until the response head.
    AwaitResponse {
        connect: bool,
    },
    Off,
    /// A bad head was found after good bytes that had to go first.
    Rejected(&'static str),
    /// Likewise a malformed chunked body.
    Broken(&'static str),
}

/// The states of a chunked body, as hyper's decoder has them, stricter: a
/// size needs a digit, and no bare LF anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { n: u64, digits: u8 },
    Lws(u64),
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
}

/// What may be done with the bytes just scanned.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The first `n` (at least 1) bytes may go to hyper.
    Pass(usize),
    /// Nothing may go until the response head is written.
    Hold,
    /// A bad request head: hyper must answer 400 and close.
    BadHead(&'static str),
    /// A malformed body: the connection must fail.
    BadBody(&'static str),
}

/// How a good head frames its body, and whether it asks to switch protocol.
#[derive(Debug, PartialEq, Eq)]
struct HeadInfo {
    framing: Framing,
    /// `Some(is_connect)` when the connection may switch protocol after it.
    switch: Option<bool>,
}

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

pub struct Scanner {
    state: State,
    /// A head split across reads: the part seen so far.
    head: Vec<u8>,
    /// Progress toward the blank line: 1 after LF, 2 after LF CR.
    end: u8,
    /// The head has begun (leading empty lines skipped).
    started: bool,
    /// No head seen yet on this connection (the HTTP/2 preface may come).
    first: bool,
    /// The switch of the current request, applied once its body ends.
    switch: Option<bool>,
    /// Longer heads are left to hyper, which answers 431.
    limit: usize,
}

impl Scanner {
    pub fn new(limit: usize) -> Self {
        Scanner {
            state: State::Head,
            head: Vec::new(),
            end: 0,
            started: false,
            first: true,
            switch: None,
            limit,
        }
    }

    fn off() -> Self {
        Scanner {
            state: State::Off,
            ..Scanner::new(0)
        }
    }

    fn is_off(&self) -> bool {
        self.state == State::Off
    }

    fn awaits_response(&self) -> bool {
        matches!(self.state, State::AwaitResponse { .. })
    }

    /// A head is on its way: the connection's first (not complete yet), or
    /// a later one of which some bytes came.
    fn awaits_head(&self) -> bool {
        self.state == State::Head && (self.first || self.started)
    }

    /// Scans the start of `data` (not empty).
    pub fn scan(&mut self, data: &[u8]) -> Verdict {
        match self.state {
            State::Off => Verdict::Pass(data.len()),
            State::AwaitResponse { .. } => Verdict::Hold,
            State::Rejected(reason) => Verdict::BadHead(reason),
            State::Broken(reason) => Verdict::BadBody(reason),
            State::Head => self.scan_head(data),
            State::Length(n) => {
                let k = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
                let left = n - k as u64;
                if left == 0 {
                    self.body_done();
                } else {
                    self.state = State::Length(left);
                }
                Verdict::Pass(k)
            }
            State::Chunked(c) => self.scan_chunked(c, data),
        }
    }

    /// The response head hyper writes after a request asking to switch.
    /// Returns true when held input may flow again.
    pub fn saw_response(&mut self, bytes: &[u8]) -> bool {
        let State::AwaitResponse { connect } = self.state else {
            return false;
        };
        // "HTTP/1.1 101 ..."
        let status = bytes.get(9..12).unwrap_or(b"000");
        let switched = status == b"101" || (connect && status[0] == b'2');
        self.state = if switched { State::Off } else { State::Head };
        true
    }

    fn body_done(&mut self) {
        self.state = match self.switch.take() {
            Some(connect) => State::AwaitResponse { connect },
            None => State::Head,
        };
    }

    fn scan_head(&mut self, data: &[u8]) -> Verdict {
        let mut i = 0;
        if !self.started {
            // hyper skips empty lines before a request line; so may we.
            while i < data.len() && matches!(data[i], b'\r' | b'\n') {
                i += 1;
            }
            if i == data.len() {
                return Verdict::Pass(i);
            }
            self.started = true;
        }
        let start = i;
        let mut found = false;
        // Jump from line end to line end (memchr, not byte by byte: a head
        // with a bearer token is mostly long values).
        while let Some(off) = memchr::memchr(b'\n', &data[i..]) {
            let p = i + off;
            // The state just before this LF; no other LF lies in i..p.
            let before = match off {
                0 => self.end,
                1 if data[p - 1] == b'\r' && self.end == 1 => 2,
                _ => 0,
            };
            i = p + 1;
            if before != 0 {
                found = true;
                break;
            }
            self.end = 1;
        }
        if !found {
            self.end = match &data[i..] {
                [] => self.end,
                [b'\r'] if self.end == 1 => 2,
                _ => 0,
            };
            i = data.len();
            if self.head.len() + (i - start) > self.limit {
                // hyper's buffer is no larger: it answers 431 and closes.
                self.state = State::Off;
            } else {
                self.head.extend_from_slice(&data[start..i]);
            }
            return Verdict::Pass(i);
        }
        let checked = if self.head.is_empty() {
            self.check(&data[start..i])
        } else {
            self.head.extend_from_slice(&data[start..i]);
            let head = std::mem::take(&mut self.head);
            let checked = self.check(&head);
            self.head = head;
            self.head.clear();
            checked
        };
        self.end = 0;
        self.started = false;
        self.first = false;
        match checked {
            Ok(None) => {
                self.state = State::Off;
                Verdict::Pass(i)
            }
            Ok(Some(info)) => {
                self.switch = info.switch;
                match info.framing {
                    Framing::None => self.body_done(),
                    Framing::Length(n) => self.state = State::Length(n),
                    Framing::Chunked => {
                        self.state = State::Chunked(Chunk::Size { n: 0, digits: 0 })
                    }
                }
                Verdict::Pass(i)
            }
            // Let the skipped empty lines go first; refuse on the next call.
            Err(reason) if start > 0 => {
                self.state = State::Rejected(reason);
                Verdict::Pass(start)
            }
            Err(reason) => {
                self.state = State::Rejected(reason);
                Verdict::BadHead(reason)
            }
        }
    }

    /// Ok(None): the HTTP/2 preface, stop inspecting.
    fn check(&self, head: &[u8]) -> Result<Option<HeadInfo>, &'static str> {
        if self.first && head == H2_PREFACE {
            return Ok(None);
        }
        check_head(head).map(Some)
    }

    fn scan_chunked(&mut self, mut c: Chunk, data: &[u8]) -> Verdict {
        let mut i = 0;
        while i < data.len() {
            if let Chunk::Data(n) = c {
                let k = usize::try_from(n).unwrap_or(usize::MAX).min(data.len() - i);
                i += k;
                let left = n - k as u64;
                c = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                };
                continue;
            }
            let b = data[i];
            i += 1;
            c = match (c, b) {
                (Chunk::Size { n, digits }, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    if digits >= MAX_SIZE_DIGITS {
                        return self.bad_body(i, "chunk size too long");
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    Chunk::Size {
                        n: (n << 4) | u64::from(d),
                        digits: digits + 1,
                    }
                }
                (Chunk::Size { digits: 0, .. }, _) => {
                    return self.bad_body(i, "chunk size without digits")
                }
                (Chunk::Size { n, .. } | Chunk::Lws(n), b' ' | b'\t') => Chunk::Lws(n),
                (Chunk::Size { n, .. } | Chunk::Lws(n) | Chunk::Ext(n), b';') => Chunk::Ext(n),
                (Chunk::Size { n, .. } | Chunk::Lws(n) | Chunk::Ext(n), b'\r') => Chunk::SizeLf(n),
                (Chunk::Ext(_), b'\n') => return self.bad_body(i, "bare LF in a chunk extension"),
                (Chunk::Ext(n), _) => Chunk::Ext(n),
                (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
                (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size { n: 0, digits: 0 },
                (Chunk::EndCr, b'\r') => Chunk::EndLf,
                (Chunk::EndCr | Chunk::Trailer, b'\n') => {
                    return self.bad_body(i, "bare LF in a trailer")
                }
                (Chunk::EndCr | Chunk::Trailer, _) if b == b'\r' => Chunk::TrailerLf,
                (Chunk::EndCr | Chunk::Trailer, _) => Chunk::Trailer,
                (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
                (Chunk::EndLf, b'\n') => {
                    self.body_done();
                    return Verdict::Pass(i);
                }
                _ => return self.bad_body(i, "malformed chunked body"),
            };
        }
        self.state = State::Chunked(c);
        Verdict::Pass(i)
    }

    /// The byte at `i - 1` is bad: pass what came before it first; later
    /// calls fail.
    fn bad_body(&mut self, i: usize, reason: &'static str) -> Verdict {
        self.state = State::Broken(reason);
        if i > 1 {
            Verdict::Pass(i - 1)
        } else {
            Verdict::BadBody(reason)
        }
    }
}

/// Checks a whole request head, from its request line to its blank line.
fn check_head(head: &[u8]) -> Result<HeadInfo, &'static str> {
    for i in memchr::memchr3_iter(b'\n', b'\r', 0, head) {
        match head[i] {
            b'\n' if i == 0 || head[i - 1] != b'\r' => return Err("bare LF line ending"),
            b'\r' if head.get(i + 1) != Some(&b'\n') => return Err("bare CR"),
            0 => return Err("NUL byte"),
            _ => {}
        }
    }
    // Every line ends in CRLF now; the last line is the empty one.
    let mut from = 0;
    let mut lines = memchr::memchr_iter(b'\n', head).map(|end| {
        let line = &head[from..end];
        from = end + 1;
        line.strip_suffix(b"\r").unwrap_or(line)
    });
    let request_line = lines.next().unwrap_or_default();
    let connect = request_line.starts_with(b"CONNECT ");
    let mut length: Option<u64> = None;
    let mut te_seen = false;
    let mut te_chunked = 0u32;
    let mut te_last_chunked = false;
    let mut upgrade = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            return Err("obs-fold header line");
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return Err("header line without a colon");
        };
        let name = &line[..colon];
        if name.iter().any(|&b| matches!(b, b' ' | b'\t')) {
            return Err("whitespace before the colon");
        }
        let value = &line[colon + 1..];
        if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                let n = parse_length(part.trim_ascii()).ok_or("invalid content-length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("differing content-lengths");
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_seen = true;
            for coding in value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                te_last_chunked = coding.eq_ignore_ascii_case(b"chunked");
                te_chunked += u32::from(te_last_chunked);
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    let framing = if te_seen {
        if length.is_some() {
            return Err("both content-length and transfer-encoding");
        }
        if !te_last_chunked || te_chunked != 1 {
            return Err("transfer-encoding not ending in one chunked");
        }
        Framing::Chunked
    } else {
        match length {
            None | Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    let switch = (upgrade || connect).then_some(connect);
    Ok(HeadInfo { framing, switch })
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    // === the scanner alone ===

    /// Feeds `chunks` one after the other; returns the bytes passed and the
    /// first verdict that was not a pass.
    fn scan_all(s: &mut Scanner, chunks: &[&[u8]]) -> (Vec<u8>, Option<Verdict>) {
        let mut passed = Vec::new();
        for chunk in chunks {
            let mut rest = *chunk;
            while !rest.is_empty() {
                match s.scan(rest) {
                    Verdict::Pass(n) => {
                        assert!(n > 0 && n <= rest.len(), "pass of {n}");
                        passed.extend_from_slice(&rest[..n]);
                        rest = &rest[n..];
                    }
                    other => return (passed, Some(other)),
                }
            }
        }
        (passed, None)
    }

    /// The same input fed whole, byte by byte, and cut at every place.
    fn every_split(input: &[u8]) -> Vec<Vec<&[u8]>> {
        let mut out = vec![vec![input], input.chunks(1).collect()];
        for cut in 1..input.len() {
            out.push(vec![&input[..cut], &input[cut..]]);
        }
        out
    }

    #[test]
    fn good_pipelined_requests_pass_whole_however_split() {
        let input: &[u8] = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
5;ext=1\r\nhello\r\na \r\n0123456789\r\n0\r\nx-t: 1\r\ny-t: 2\r\n\r\n\
\r\nGET /d HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";
        for chunks in every_split(input) {
            let mut s = Scanner::new(8192);
            let (passed, verdict) = scan_all(&mut s, &chunks);
            assert_eq!(
                verdict,
                None,
                "split {:?}",
                chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
            );
            assert_eq!(passed, input);
            assert_eq!(s.state, State::Head, "ready for the next head");
        }
    }

    #[test]
    fn body_bytes_are_not_read_as_heads() {
        // A body that looks like a bad head is only a body.
        let body = b"GET /x HTTP/1.1\nhost: y\n\n";
        let mut input = format!(
            "POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        input.extend_from_slice(body);
        input.extend_from_slice(b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n19\r\n");
        input.extend_from_slice(body);
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        for chunks in every_split(&input) {
            let mut s = Scanner::new(8192);
            assert_eq!(scan_all(&mut s, &chunks), (input.clone(), None));
        }
    }

    fn refused(head: &str) -> &'static str {
        let mut s = Scanner::new(8192);
        match scan_all(&mut s, &[head.as_bytes()]) {
            (_, Some(Verdict::BadHead(r))) => r,
            other => panic!("{head:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let cases = [
            (
                "POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
                "both",
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
                "both",
            ),
            ("GET / HTTP/1.1\nhost: x\n\n", "bare LF"),
            ("GET / HTTP/1.1\r\nhost: x\n\r\n", "bare LF"),
            ("GET / HTTP/1.1\r\nhost: x\r\n\n", "bare LF"),
            (
                "POST / HTTP/1.1\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n",
                "differing",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 4, 5\r\n\r\n",
                "differing",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: +4\r\n\r\n",
                "invalid content-length",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
                "invalid",
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked, identity\r\n\r\n",
                "not ending",
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
                "not ending",
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
                "not ending",
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: x\r\n\r\n",
                "not ending",
            ),
            ("GET / HTTP/1.1\r\nx-a: a\r\n b\r\n\r\n", "obs-fold"),
            ("GET / HTTP/1.1\r\nx-a: a\r\n\tb\r\n\r\n", "obs-fold"),
            ("GET / HTTP/1.1\r\nhost : x\r\n\r\n", "whitespace"),
            (
                "GET / HTTP/1.1\r\ncontent-length\t: 0\r\n\r\n",
                "whitespace",
            ),
            ("GET / HTTP/1.1\r\nx-a: a\0b\r\n\r\n", "NUL"),
            ("GET / HTTP/1.1\r\nx-a: a\rb\r\n\r\n", "bare CR"),
            ("GET / HTTP/1.1\r\nno colon\r\n\r\n", "colon"),
        ];
        for (head, want) in cases {
            let reason = refused(head);
            assert!(reason.contains(want), "{head:?}: {reason:?} lacks {want:?}");
        }
    }

    #[test]
    fn accepted_framings() {
        let ok = [
            "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\ncontent-length: 3, 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: CHUNKED\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nx-empty:\r\nx-tab:\ta\t\r\n\r\n",
        ];
        for input in ok {
            let mut s = Scanner::new(8192);
            let got = scan_all(&mut s, &[input.as_bytes()]);
            assert_eq!(got, (input.as_bytes().to_vec(), None), "{input:?}");
            assert_eq!(s.state, State::Head, "{input:?}");
        }
    }

    #[test]
    fn a_bad_head_after_good_bytes_lets_them_go_first() {
        let good = b"POST /a HTTP/1.1\r\ncontent-length: 2\r\n\r\nok";
        let mut input = good.to_vec();
        input.extend_from_slice(b"GET /b HTTP/1.1\nhost: x\n\n");
        let mut s = Scanner::new(8192);
        let (passed, verdict) = scan_all(&mut s, &[&input]);
        assert_eq!(passed, good);
        assert_eq!(verdict, Some(Verdict::BadHead("bare LF line ending")));
        // Once refused, always refused.
        assert!(matches!(
            s.scan(b"GET / HTTP/1.1\r\n\r\n"),
            Verdict::BadHead(_)
        ));
    }

    #[test]
    fn malformed_chunks_fail_after_the_good_bytes() {
        let cases: [&[u8]; 6] = [
            b"5\nhello\r\n0\r\n\r\n",      // bare LF after the size
            b"5\r\nhelloX\r\n0\r\n\r\n",   // no CRLF after the data
            b"\r\nhello\r\n0\r\n\r\n",     // no size digits
            b"11111111111111111\r\n",      // size overflow
            b"0\r\nx-t: 1\n\r\n",          // bare LF in a trailer
            b"3;a\nb\r\nabc\r\n0\r\n\r\n", // bare LF in an extension
        ];
        let head = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        for body in cases {
            let mut input = head.to_vec();
            input.extend_from_slice(body);
            let mut s = Scanner::new(8192);
            let (passed, verdict) = scan_all(&mut s, &[&input]);
            assert!(
                matches!(verdict, Some(Verdict::BadBody(_))),
                "{:?}: {verdict:?}",
                String::from_utf8_lossy(body)
            );
            assert!(passed.len() >= head.len() && passed.len() < input.len());
        }
    }

    #[test]
    fn http2_preface_turns_the_check_off() {
        let input: &[u8] =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00\n\n";
        for chunks in every_split(input) {
            let mut s = Scanner::new(8192);
            assert_eq!(scan_all(&mut s, &chunks), (input.to_vec(), None));
            assert!(s.is_off());
        }
        // Only as the first bytes of a connection.
        let mut s = Scanner::new(8192);
        let input: &[u8] = b"GET / HTTP/1.1\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\n\n";
        let (passed, _) = scan_all(&mut s, &[input]);
        assert!(!s.is_off(), "still checked (hyper refuses that version)");
        assert!(
            passed.len() < input.len(),
            "the bare LF after it was not passed"
        );
    }

    #[test]
    fn a_head_over_the_limit_is_left_to_hyper() {
        let mut s = Scanner::new(64);
        let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n", "a".repeat(100));
        let (passed, verdict) = scan_all(&mut s, &[big.as_bytes()]);
        assert_eq!((passed.len(), verdict), (big.len(), None));
        assert!(s.is_off(), "hyper answers 431 and closes");
    }

    #[test]
    fn switching_protocols_waits_for_the_response() {
        let head = b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
        let mut s = Scanner::new(8192);
        assert_eq!(s.scan(head), Verdict::Pass(head.len()));
        assert_eq!(s.scan(b"\x81\x05hello"), Verdict::Hold);
        assert!(s.saw_response(b"HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(s.is_off());

        // Refused upgrade: still HTTP/1, still checked.
        let mut s = Scanner::new(8192);
        assert_eq!(s.scan(head), Verdict::Pass(head.len()));
        assert!(s.saw_response(b"HTTP/1.1 404 Not Found\r\n"));
        assert!(matches!(s.scan(b"GET / HTTP/1.1\n\n"), Verdict::BadHead(_)));

        // CONNECT switches on any 2xx.
        let mut s = Scanner::new(8192);
        let connect = b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n";
        assert_eq!(s.scan(connect), Verdict::Pass(connect.len()));
        assert!(s.saw_response(b"HTTP/1.1 200 OK\r\n"));
        assert!(s.is_off());
    }

    // === the guard in front of a real hyper server ===

    /// The head timeout of the served connections.
    const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

    /// Answers `METHOD PATH BODYLEN`, counting the requests it saw; `/ws`
    /// with an upgrade header switches and echoes the raw bytes.
    async fn serve(io: DuplexStream, seen: Arc<AtomicUsize>) {
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                if req.uri().path() == "/ws" && req.headers().contains_key("upgrade") {
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on.await {
                            let mut up = TokioIo::new(up);
                            let mut buf = [0u8; 64];
                            while let Ok(n) = up.read(&mut buf).await {
                                if n == 0 || up.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                    let res = Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("upgrade", "echo")
                        .header("connection", "upgrade")
                        .body(Full::new(Bytes::new()))
                        .unwrap_or_default();
                    return Ok::<_, hyper::Error>(res);
                }
                let line = format!("{} {}", req.method(), req.uri().path());
                let body = req.into_body().collect().await?.to_bytes();
                Ok(Response::new(Full::new(Bytes::from(format!(
                    "{line} {}",
                    body.len()
                )))))
            }
        });
        let io = H1Guard::new(TokioIo::new(io), 8192, true, HEAD_TIMEOUT);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await;
    }

    /// Sends `chunks` (yielding between them so the server reads them apart)
    /// and reads until the server closes or goes quiet.
    async fn exchange(chunks: &[&[u8]]) -> (String, usize) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let seen = Arc::new(AtomicUsize::new(0));
        tokio::spawn(serve(server, seen.clone()));
        for c in chunks {
            // The server may refuse and close before all is sent.
            if client.write_all(c).await.is_err() {
                break;
            }
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Paused time: the timeout fires as soon as everything is idle.
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        (
            String::from_utf8_lossy(&got).into_owned(),
            seen.load(Ordering::SeqCst),
        )
    }

    fn statuses(text: &str) -> Vec<&str> {
        text.match_indices("HTTP/1.1 ")
            .map(|(i, _)| &text[i + 9..i + 12])
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn hyper_serves_pipelined_requests_through_the_guard() {
        let input: &[u8] = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
5\r\nhello\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n\
GET /d HTTP/1.1\r\nhost: x\r\n\r\n";
        for chunks in [
            vec![input],
            input.chunks(1).collect(),
            input.chunks(7).collect(),
        ] {
            let (text, seen) = exchange(&chunks).await;
            assert_eq!(statuses(&text), ["200"; 4], "{text}");
            for want in ["GET /a 0", "POST /b 5", "POST /c 8", "GET /d 0"] {
                assert!(text.contains(want), "{want} missing in {text}");
            }
            assert_eq!(seen, 4);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bad_heads_get_400_and_close_and_never_reach_the_service() {
        for bad in [
            "POST /s HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /s HTTP/1.1\nhost: x\n\n",
            "GET /s HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n x\r\n\r\n",
        ] {
            let split: Vec<&[u8]> = bad.as_bytes().chunks(5).collect();
            for chunks in [vec![bad.as_bytes()], split] {
                let (text, seen) = exchange(&chunks).await;
                assert_eq!(statuses(&text), ["400"], "{bad:?}: {text}");
                assert_eq!(seen, 0, "{bad:?} reached the service");
            }
        }
        // After a good request in the same pipeline: its answer comes first.
        let input = b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\nGET /s HTTP/1.1\nhost: x\n\nGET /never HTTP/1.1\r\n\r\n";
        let (text, seen) = exchange(&[input]).await;
        assert_eq!(statuses(&text), ["200", "400"], "{text}");
        assert_eq!(seen, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_malformed_chunked_body_fails_the_request() {
        let input = b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n";
        let (text, _) = exchange(&[input]).await;
        assert!(
            !text.contains("POST /c 5"),
            "the body was read whole: {text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_connection_is_not_inspected() {
        let head = b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n";
        // Bytes of the new protocol, bare LFs and all, sent right after.
        let raw = b"not\nhttp\n\n";
        let (text, seen) = exchange(&[head, raw]).await;
        assert_eq!(statuses(&text), ["101"], "{text}");
        assert!(text.ends_with("not\nhttp\n\n"), "not echoed: {text:?}");
        assert_eq!(seen, 1);

        // The same upgrade request on a path that does not switch: the
        // next head is still checked.
        let head = b"GET /no HTTP/1.1\r\nhost: x\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n";
        let (text, seen) = exchange(&[head, b"GET /s HTTP/1.1\nhost: x\n\n"]).await;
        assert_eq!(statuses(&text), ["200", "400"], "{text}");
        assert_eq!(seen, 1);
    }

    /// Reads until the server closes (Some(time it took)) or 60 s pass.
    async fn closed_after(client: &mut DuplexStream) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(60), client.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_slower_than_the_timeout_is_cut() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let seen = Arc::new(AtomicUsize::new(0));
        tokio::spawn(serve(server, seen.clone()));
        // A byte every 2 s: the head would take 30 s.
        let head = b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n";
        let start = tokio::time::Instant::now();
        for b in head {
            if client.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let took = start.elapsed() + closed_after(&mut client).await.unwrap_or(Duration::MAX / 2);
        assert!(took < Duration::from_secs(31), "not cut: {took:?}");
        assert_eq!(
            seen.load(Ordering::SeqCst),
            0,
            "the slow request was served"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_sending_nothing_is_cut_after_the_timeout() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, Arc::new(AtomicUsize::new(0))));
        let took = closed_after(&mut client).await;
        assert_eq!(took, Some(HEAD_TIMEOUT), "closed after {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_outlives_the_head_timeout() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let seen = Arc::new(AtomicUsize::new(0));
        tokio::spawn(serve(server, seen.clone()));
        let mut buf = [0u8; 4096];
        for path in ["/a", "/b"] {
            let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
            client.write_all(req.as_bytes()).await.expect("write");
            let n = client.read(&mut buf).await.expect("read");
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
            assert!(text.contains(&format!("GET {path} 0")), "{text}");
            // Idle for six head timeouts between the two requests.
            tokio::time::sleep(HEAD_TIMEOUT * 6).await;
        }
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }
}
