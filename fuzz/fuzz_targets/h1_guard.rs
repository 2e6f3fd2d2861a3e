//! The strict HTTP/1 head check (proxy/src/h1_guard/, included by path):
//! never panics, passes at least one byte per pass, gives the same verdict
//! however the input is cut into reads, and never passes a whole head with
//! a bare LF, or both Content-Length and Transfer-Encoding.
#![no_main]

#[path = "../../proxy/src/h1_guard/mod.rs"]
#[allow(dead_code)]
mod h1_guard;

use h1_guard::{Scanner, Verdict};
use libfuzzer_sys::fuzz_target;

/// Scans `data` cut at `cuts`; returns the passed bytes and the first
/// verdict that was not a pass, as text (for comparison).
fn run(data: &[u8], cuts: &[usize]) -> (Vec<u8>, String) {
    let mut s = Scanner::new(4096);
    let mut passed = Vec::new();
    let mut at = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        let mut rest = &data[at..end];
        at = end;
        while !rest.is_empty() {
            match s.scan(rest) {
                Verdict::Pass(n) => {
                    assert!(n >= 1 && n <= rest.len(), "pass of {n} of {}", rest.len());
                    passed.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
                Verdict::Hold => return (passed, "hold".into()),
                Verdict::BadHead(_) => return (passed, "bad head".into()),
                Verdict::BadBody(_) => return (passed, "bad body".into()),
            }
        }
    }
    (passed, "more".into())
}

fuzz_target!(|input: &[u8]| {
    // First byte: where to cut; the rest: the bytes of a connection.
    let Some((&seed, data)) = input.split_first() else {
        return;
    };
    let whole = run(data, &[]);
    let step = usize::from(seed % 16) + 1;
    let cuts: Vec<usize> = (step..data.len()).step_by(step).collect();
    let cut = run(data, &cuts);
    // Same verdict however the input is read; a head split across reads is
    // passed on as it comes (its end is what is held back), so the cut run
    // may pass more of a head it then refuses.
    assert_eq!(
        whole.1, cut.1,
        "the verdict depends on how the input is read"
    );
    assert!(
        cut.0.starts_with(&whole.0),
        "the cut run passed other bytes"
    );
    assert!(data.starts_with(&cut.0));
    for passed in [&whole.0, &cut.0] {
        check_passed(passed);
    }
});

/// If httparse reads the first passed head as a complete request, it must
/// not carry the shapes the guard refuses.
fn check_passed(passed: &[u8]) {
    if passed.starts_with(b"PRI * HTTP/2.0") {
        return;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(len)) = req.parse(passed) {
        let head = &passed[..len];
        let start = head
            .iter()
            .position(|b| !matches!(b, b'\r' | b'\n'))
            .unwrap_or(0);
        let head = &head[start..];
        for (i, &b) in head.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && head[i - 1] == b'\r', "a bare LF passed: {head:?}");
            }
        }
        let has = |n: &str| req.headers.iter().any(|h| h.name.eq_ignore_ascii_case(n));
        assert!(
            !(has("content-length") && has("transfer-encoding")),
            "CL and TE passed together: {head:?}"
        );
    }
}
