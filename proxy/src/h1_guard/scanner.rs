//! The byte-level state machine, no IO: it follows one connection's bytes
//! through heads, bodies and protocol switches. Kept apart from the socket
//! so the same input can be checked to give the same verdict however it is
//! cut into reads (the unit tests, and the fuzz target that includes it).

use super::head::{check_head, scan_head, Framing, HeadInfo, HeadScan};

/// The start of the HTTP/2 connection preface, up to its blank line.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";
/// More hex digits than a u64 chunk size holds.
const MAX_SIZE_DIGITS: u8 = 16;

/// Where the scanner is in the byte stream of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
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
pub(super) enum Chunk {
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

pub struct Scanner {
    pub(super) state: State,
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

    pub(super) fn off() -> Self {
        Scanner {
            state: State::Off,
            ..Scanner::new(0)
        }
    }

    pub(super) fn is_off(&self) -> bool {
        self.state == State::Off
    }

    pub(super) fn awaits_response(&self) -> bool {
        matches!(self.state, State::AwaitResponse { .. })
    }

    /// A head is on its way: the connection's first (not complete yet), or
    /// a later one of which some bytes came.
    pub(super) fn awaits_head(&self) -> bool {
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
        if self.head.is_empty() && self.end == 0 {
            // The usual case, a head in one read: one pass checks it and
            // finds its end. Otherwise (a part of a head, or a bad byte,
            // whose verdict must wait for the head's end as it would in
            // reads cut anywhere) the head is gathered to its end below.
            if let HeadScan::Done(verdict, len) = scan_head(&data[start..]) {
                let end = start + len;
                let checked = if self.first && &data[start..end] == H2_PREFACE {
                    Ok(None)
                } else {
                    verdict.map(Some)
                };
                return self.head_checked(checked, start, end);
            }
        }
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
        self.head_checked(checked, start, i)
    }

    /// The verdict on a head that began at `start` and ended at `i`.
    fn head_checked(
        &mut self,
        checked: Result<Option<HeadInfo>, &'static str>,
        start: usize,
        i: usize,
    ) -> Verdict {
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
