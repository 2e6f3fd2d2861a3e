//! One whole request head judged at once, from its request line to its
//! blank line: the shapes that let two parsers frame a request differently
//! are refused, and a good head says how its body is framed.

/// How a good head frames its body, and whether it asks to switch protocol.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct HeadInfo {
    pub(super) framing: Framing,
    /// `Some(is_connect)` when the connection may switch protocol after it.
    pub(super) switch: Option<bool>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// What one pass over the start of a head found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeadScan {
    /// The head's verdict, and where it ends (just past its blank line).
    Done(Result<HeadInfo, &'static str>, usize),
    /// A NUL, bare CR or bare LF: the verdict on any head this is part
    /// of, wherever it ends.
    BadByte(&'static str),
    /// No blank line yet, and no bad byte: the head goes on in later reads.
    More,
}

/// Checks a whole request head, from its request line to its blank line.
pub(super) fn check_head(head: &[u8]) -> Result<HeadInfo, &'static str> {
    match scan_head(head) {
        HeadScan::Done(verdict, _) => verdict,
        HeadScan::BadByte(e) => Err(e),
        // Not for a head ending in its blank line; never refused silently.
        HeadScan::More => Err("incomplete head"),
    }
}

/// Checks the head at the start of `data` up to its blank line, and finds
/// that line: a head that came in one read is read once, not once to find
/// its end and again to check it.
///
/// One pass: the CR, LF and NUL bytes memchr finds are both the byte checks
/// and the line ends (every CR must be followed by LF, so a line ends at its
/// CR). A bad byte anywhere is the verdict even after a bad line, as a
/// check of all bytes first would have it.
pub(super) fn scan_head(data: &[u8]) -> HeadScan {
    let mut lines = HeadLines::default();
    let mut line_error = None;
    let mut from = 0;
    // Each search starts past the last CRLF: the LF of a CRLF is never
    // searched for, so every LF found is bare, and a head takes one memchr
    // call per line, not two (each call costs ~70 instructions to start).
    while let Some(found) = memchr::memchr3(b'\n', b'\r', 0, &data[from..]) {
        let i = from + found;
        let bad = match (data[i], data.get(i + 1)) {
            (0, _) => "NUL byte",
            (b'\n', _) => "bare LF line ending",
            // Its LF may come in the next read.
            (_, None) => return HeadScan::More,
            (_, Some(&b'\n')) => {
                let line = &data[from..i];
                from = i + 2;
                // The blank line, after a bad line too.
                if line.is_empty() && lines.started {
                    let verdict = match line_error {
                        Some(e) => Err(e),
                        None => lines.info(),
                    };
                    return HeadScan::Done(verdict, from);
                }
                if line_error.is_none() {
                    line_error = lines.line(line).err();
                }
                continue;
            }
            _ => "bare CR",
        };
        return HeadScan::BadByte(bad);
    }
    HeadScan::More
}

/// What the lines of a head said so far.
#[derive(Default)]
struct HeadLines {
    /// The request line has been seen.
    started: bool,
    connect: bool,
    length: Option<u64>,
    te_seen: bool,
    te_chunked: u32,
    te_last_chunked: bool,
    upgrade: bool,
}

impl HeadLines {
    /// One line, its CRLF taken off.
    fn line(&mut self, line: &[u8]) -> Result<(), &'static str> {
        if !self.started {
            self.started = true;
            self.connect = line.starts_with(b"CONNECT ");
            return Ok(());
        }
        // The blank line is the caller's to see.
        let Some(&first) = line.first() else {
            return Ok(());
        };
        if matches!(first, b' ' | b'\t') {
            return Err("obs-fold header line");
        }
        // Names are short: a plain scan to the colon, whitespace noted.
        let mut colon = None;
        let mut space = false;
        for (i, &b) in line.iter().enumerate() {
            match b {
                b':' => {
                    colon = Some(i);
                    break;
                }
                b' ' | b'\t' => space = true,
                _ => {}
            }
        }
        let Some(colon) = colon else {
            return Err("header line without a colon");
        };
        if space {
            return Err("whitespace before the colon");
        }
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                let n = parse_length(part.trim_ascii()).ok_or("invalid content-length")?;
                if self.length.is_some_and(|l| l != n) {
                    return Err("differing content-lengths");
                }
                self.length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.te_seen = true;
            for coding in value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                self.te_last_chunked = coding.eq_ignore_ascii_case(b"chunked");
                self.te_chunked += u32::from(self.te_last_chunked);
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
        Ok(())
    }

    fn info(&self) -> Result<HeadInfo, &'static str> {
        let framing = if self.te_seen {
            if self.length.is_some() {
                return Err("both content-length and transfer-encoding");
            }
            if !self.te_last_chunked || self.te_chunked != 1 {
                return Err("transfer-encoding not ending in one chunked");
            }
            Framing::Chunked
        } else {
            match self.length {
                None | Some(0) => Framing::None,
                Some(n) => Framing::Length(n),
            }
        };
        let switch = (self.upgrade || self.connect).then_some(self.connect);
        Ok(HeadInfo { framing, switch })
    }
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}
