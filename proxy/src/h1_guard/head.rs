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

/// Checks a whole request head, from its request line to its blank line.
pub(super) fn check_head(head: &[u8]) -> Result<HeadInfo, &'static str> {
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
