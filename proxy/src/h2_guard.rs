//! HTTP/2 abuse accounting on a connection, between the socket and hyper
//! (limits.md: `h2_resets`, `h2_control_frames`).
//!
//! hyper and h2 bound resets of streams not yet accepted, but not a client
//! that pauses between opening and resetting its streams (each reaches the
//! upstream), nor PRIORITY, WINDOW_UPDATE, PING and SETTINGS floods, which
//! h2 answers one by one. `H2Guard` reads the frame headers of a connection
//! that began with the HTTP/2 preface, counts resets and control frames over
//! a 10 s window, and past a limit writes a GOAWAY (ENHANCE_YOUR_CALM) and
//! fails the connection, so hyper drops its streams and their upstream tries.
//! WINDOW_UPDATEs are what flow control needs while kaname sends data: each
//! KiB written earns one.
//!
//! Why not hyper: it exposes no frame counts (h2's own reset limit counts
//! only streams reset before they are accepted).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use prometheus::IntCounter;
use tokio::time::Instant;

use crate::conn::Activity;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;

/// The limits of one listener's HTTP/2 connections.
#[derive(Clone)]
pub struct H2Limits {
    /// Streams the client may reset within `window`.
    pub resets: u32,
    /// PING, SETTINGS, PRIORITY and unearned WINDOW_UPDATE frames within `window`.
    pub control_frames: u32,
    pub window: Duration,
    /// `kaname_limits_hit_total{limit="h2_resets"}` and `{limit="h2_control_frames"}`.
    pub resets_hit: IntCounter,
    pub control_hit: IntCounter,
    /// `{limit="h2_max_concurrent_streams"}`: streams h2 refused (seen as
    /// the RST_STREAM REFUSED_STREAM it writes).
    pub streams_hit: IntCounter,
}

/// Where the read side is in the client's byte stream.
enum Mode {
    /// Comparing the first bytes with the preface.
    Sniff(usize),
    /// Past the preface: frame headers are read, payloads skipped.
    Frames,
    /// Not HTTP/2 (or the limit is off): bytes pass untouched.
    Off,
}

/// Frame boundaries of one direction of a connection.
#[derive(Default)]
struct FrameCursor {
    header: [u8; FRAME_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to come.
    skip: usize,
    /// The current frame's type, and the error code of a RST_STREAM as it
    /// comes (`code_have` of its 4 bytes).
    kind: u8,
    code: [u8; 4],
    code_have: usize,
}

impl FrameCursor {
    /// Walks `bytes`, calling `on_frame(type, flags, stream)` per frame
    /// header; returns how many RST_STREAM REFUSED_STREAM frames ended in them.
    fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(u8, u8, u32)) -> u32 {
        let mut refused = 0;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                if self.kind == RST_STREAM && self.code_have < 4 {
                    let take = n.min(4 - self.code_have);
                    self.code[self.code_have..self.code_have + take]
                        .copy_from_slice(&bytes[..take]);
                    self.code_have += take;
                    if self.code_have == 4 && u32::from_be_bytes(self.code) == REFUSED_STREAM {
                        refused += 1;
                    }
                }
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == FRAME_HEADER {
                let h = self.header;
                self.have = 0;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                self.kind = h[3];
                self.code_have = 0;
                on_frame(h[3], h[4], stream);
            }
        }
        refused
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }
}

/// Counts events from a window's start; past `limit`, a window younger
/// than `window` trips, an older one starts again. A client is refused only
/// for more than `limit` events in less than `window`.
struct Counter {
    count: u32,
    since: Option<Instant>,
}

impl Counter {
    fn new() -> Self {
        Counter {
            count: 0,
            since: None,
        }
    }

    /// Adds one; true when the limit is passed within the window.
    fn over(&mut self, limit: u32, window: Duration) -> bool {
        self.count += 1;
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
        if self.count <= limit {
            return false;
        }
        // Only now read the clock again: the common case costs an add.
        let now = Instant::now();
        match self.since {
            Some(t) if now.duration_since(t) < window => true,
            _ => {
                self.since = Some(now);
                self.count = 1;
                false
            }
        }
    }
}

pub struct H2Guard<T> {
    inner: T,
    mode: Mode,
    limits: Option<H2Limits>,
    read: FrameCursor,
    written: FrameCursor,
    resets: Counter,
    control: Counter,
    /// WINDOW_UPDATEs earned by bytes written (one per KiB).
    credit: u64,
    last_stream: u32,
    /// The GOAWAY still to write, and how much of it went out.
    goaway: Option<([u8; 17], usize)>,
    /// Told when a request or response moves (`stream_idle_timeout`).
    activity: Option<Arc<Activity>>,
}

impl<T> H2Guard<T> {
    /// `limits: None` passes every byte untouched (an HTTP/1-only listener).
    pub fn new(inner: T, limits: Option<H2Limits>, activity: Option<Arc<Activity>>) -> Self {
        H2Guard {
            inner,
            mode: if limits.is_some() {
                Mode::Sniff(0)
            } else {
                Mode::Off
            },
            limits,
            read: FrameCursor::default(),
            written: FrameCursor::default(),
            resets: Counter::new(),
            control: Counter::new(),
            credit: 0,
            last_stream: 0,
            goaway: None,
            activity,
        }
    }

    /// Bytes went either way (`idle_timeout`); `moved`: a request or
    /// response moved with them (`stream_idle_timeout`).
    fn seen(&self, moved: bool) {
        if let Some(a) = &self.activity {
            if moved {
                a.moved();
            } else {
                a.touch();
            }
        }
    }

    /// Accounts the client's bytes; true when a limit trips.
    fn inspect(&mut self, mut bytes: &[u8]) -> bool {
        if let Mode::Sniff(seen) = self.mode {
            let n = (PREFACE.len() - seen).min(bytes.len());
            if bytes[..n] != PREFACE[seen..seen + n] {
                self.mode = Mode::Off;
                self.seen(true);
                return false;
            }
            bytes = &bytes[n..];
            self.mode = if seen + n == PREFACE.len() {
                Mode::Frames
            } else {
                Mode::Sniff(seen + n)
            };
        }
        if !matches!(self.mode, Mode::Frames) {
            self.seen(true);
            return false;
        }
        let Some(limits) = &self.limits else {
            return false;
        };
        let mut tripped: Option<&IntCounter> = None;
        let mut moved = false;
        let (resets, control, credit, last) = (
            &mut self.resets,
            &mut self.control,
            &mut self.credit,
            &mut self.last_stream,
        );
        let (window, max_control) = (limits.window, limits.control_frames);
        self.read.feed(bytes, |kind, flags, stream| {
            if tripped.is_some() {
                return;
            }
            let control_frame = match kind {
                HEADERS => {
                    *last = (*last).max(stream);
                    moved = true;
                    false
                }
                DATA | CONTINUATION => {
                    moved = true;
                    false
                }
                RST_STREAM => {
                    if resets.over(limits.resets, window) {
                        tripped = Some(&limits.resets_hit);
                    }
                    false
                }
                PING | SETTINGS => flags & ACK == 0,
                PRIORITY => true,
                WINDOW_UPDATE if *credit > 0 => {
                    *credit -= 1;
                    false
                }
                WINDOW_UPDATE => true,
                _ => false,
            };
            if control_frame && control.over(max_control, window) {
                tripped = Some(&limits.control_hit);
            }
        });
        self.seen(moved);
        match tripped {
            Some(counter) => {
                counter.inc();
                let mut f = [0u8; 17];
                f[2] = 8; // payload length
                f[3] = 0x7; // GOAWAY
                f[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
                f[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
                self.goaway = Some((f, 0));
                true
            }
            None => false,
        }
    }
}

impl<T: Read + Write + Unpin> H2Guard<T> {
    /// Writes what is left of the GOAWAY (when hyper is between frames),
    /// then fails the connection.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((frame, sent)) = &mut self.goaway {
            // In the middle of one of hyper's frames a GOAWAY would corrupt
            // the stream: then the connection is only closed.
            while *sent < frame.len() && (*sent > 0 || self.written.at_boundary()) {
                match Pin::new(&mut self.inner).poll_write(cx, &frame[*sent..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                    Poll::Ready(Ok(n)) => *sent += n,
                    Poll::Pending => return Poll::Pending,
                }
            }
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "HTTP/2 client over its reset or control-frame limit",
        )))
    }
}

impl<T: Read + Write + Unpin> Read for H2Guard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.goaway.is_some() {
            return this.poll_goaway(cx);
        }
        if matches!(this.mode, Mode::Off) {
            let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
            if let Poll::Ready(Ok(())) = polled {
                this.seen(true);
            }
            return polled;
        }
        // Read through a stack buffer to see the bytes, then hand them on.
        // Left uninitialised: zeroing 8 KiB on every read was a tenth of
        // an HTTP/2 request's instructions (bench/README.md).
        let mut local = [MaybeUninit::<u8>::uninit(); 8192];
        let cap = buf.remaining().min(local.len());
        let mut rb = ReadBuf::uninit(&mut local[..cap]);
        match Pin::new(&mut this.inner).poll_read(cx, rb.unfilled()) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let filled = rb.filled();
        if this.inspect(filled) {
            return this.poll_goaway(cx);
        }
        buf.put_slice(filled);
        Poll::Ready(Ok(()))
    }
}

impl<T: Write + Unpin> Write for H2Guard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        match (&polled, &this.mode) {
            (Poll::Ready(Ok(n)), Mode::Frames) => {
                this.credit += (*n as u64) / 1024;
                let mut moved = false;
                let refused = this.written.feed(&buf[..*n], |kind, _, _| {
                    moved |= matches!(kind, DATA | HEADERS | CONTINUATION);
                });
                if refused > 0 {
                    if let Some(l) = &this.limits {
                        l.streams_hit.inc_by(u64::from(refused));
                    }
                }
                this.seen(moved);
            }
            (Poll::Ready(Ok(_)), _) => this.seen(true),
            _ => {}
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn guard(resets: u32, control: u32) -> H2Guard<()> {
        H2Guard::new(
            (),
            Some(H2Limits {
                resets,
                control_frames: control,
                window: Duration::from_secs(10),
                resets_hit: IntCounter::new("r", "r").unwrap(),
                control_hit: IntCounter::new("c", "c").unwrap(),
                streams_hit: IntCounter::new("s", "s").unwrap(),
            }),
            None,
        )
    }

    #[tokio::test]
    async fn resets_past_the_limit_trip_at_any_split() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(SETTINGS, 0, 0, &[]));
        for i in 0..11u32 {
            input.extend(frame(HEADERS, 0x5, 1 + 2 * i, b"abc"));
            input.extend(frame(RST_STREAM, 0, 1 + 2 * i, &8u32.to_be_bytes()));
        }
        for split in [1, 7, 9, 13, 1000] {
            let mut g = guard(10, 1000);
            let tripped = input.chunks(split).any(|c| g.inspect(c));
            assert!(tripped, "split {split}");
            let (f, _) = g.goaway.expect("goaway");
            assert_eq!(&f[9..13], &21u32.to_be_bytes(), "last stream id");
            assert_eq!(g.limits.as_ref().unwrap().resets_hit.get(), 1);
        }
        let mut g = guard(11, 1000);
        assert!(!g.inspect(&input), "11 resets are within a limit of 11");
    }

    #[tokio::test]
    async fn control_floods_trip_but_earned_window_updates_do_not() {
        let mut g = guard(100, 50);
        assert!(!g.inspect(PREFACE));
        let wu = frame(WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes());
        g.credit = 100;
        for _ in 0..100 {
            assert!(!g.inspect(&wu), "earned");
        }
        for _ in 0..50 {
            assert!(!g.inspect(&frame(PING, 0, 0, &[0; 8])));
        }
        // ACKs are answers, not requests for work.
        assert!(!g.inspect(&frame(PING, ACK, 0, &[0; 8])));
        assert!(g.inspect(&frame(PRIORITY, 0, 3, &[0; 5])));
        assert_eq!(g.limits.as_ref().unwrap().control_hit.get(), 1);
    }

    #[test]
    fn refused_streams_are_counted_on_the_written_side() {
        let mut out = frame(SETTINGS, 0, 0, &[]);
        out.extend(frame(RST_STREAM, 0, 3, &REFUSED_STREAM.to_be_bytes()));
        out.extend(frame(RST_STREAM, 0, 5, &8u32.to_be_bytes()));
        out.extend(frame(RST_STREAM, 0, 7, &REFUSED_STREAM.to_be_bytes()));
        for split in [1, 5, 13, 1000] {
            let mut c = FrameCursor::default();
            let refused: u32 = out.chunks(split).map(|ch| c.feed(ch, |_, _, _| {})).sum();
            assert_eq!(refused, 2, "split {split}");
        }
    }

    #[tokio::test]
    async fn http1_is_left_alone() {
        let mut g = guard(0, 0);
        assert!(!g.inspect(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(matches!(g.mode, Mode::Off));
        assert!(!g.inspect(&frame(RST_STREAM, 0, 1, &[0; 4])));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_restarts() {
        let mut c = Counter::new();
        let w = Duration::from_secs(10);
        for _ in 0..5 {
            assert!(!c.over(5, w));
        }
        assert!(c.over(5, w), "a sixth within the window");
        // Slow enough: an old window starts again.
        let mut c = Counter::new();
        for _ in 0..5 {
            assert!(!c.over(5, w));
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!c.over(5, w));
        for _ in 0..4 {
            assert!(!c.over(5, w));
        }
        assert!(c.over(5, w));
    }
}
