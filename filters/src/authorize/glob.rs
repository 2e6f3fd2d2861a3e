//! Path globs of `authorize` rules, on the normalized path: `*` matches
//! within one segment, `**` (a whole segment) any number of segments —
//! `/api/orders/**` matches `/api/orders` itself and everything below —
//! otherwise exact. Hand-written: globset's `**` does not match the
//! directory itself, and its `*` crosses `/` unless told not to.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of segments, none included.
    Any,
    /// A segment with `*` wildcards (within it), or exact when it has none.
    Pattern(Vec<String>),
}

impl PathGlob {
    /// `glob` was checked by the config (starts with `/`, `**` whole).
    pub fn new(glob: &str) -> Self {
        PathGlob {
            segments: glob
                .split('/')
                .skip(1)
                .map(|s| match s {
                    "**" => Segment::Any,
                    s => Segment::Pattern(s.split('*').map(str::to_owned).collect()),
                })
                .collect(),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        matches_from(&self.segments, &parts)
    }
}

fn matches_from(glob: &[Segment], path: &[&str]) -> bool {
    match glob.split_first() {
        None => path.is_empty(),
        Some((Segment::Any, rest)) => {
            (0..=path.len()).any(|skip| matches_from(rest, &path[skip..]))
        }
        Some((Segment::Pattern(p), rest)) => match path.split_first() {
            Some((seg, more)) => segment_matches(p, seg) && matches_from(rest, more),
            None => false,
        },
    }
}

/// `pieces` is the segment split at its `*`s: the first must start it, the
/// last end it, the middle ones appear in order between.
fn segment_matches(pieces: &[String], seg: &str) -> bool {
    if let [exact] = pieces {
        return exact == seg;
    }
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return false;
    };
    if seg.len() < first.len() + last.len()
        || !seg.starts_with(first.as_str())
        || !seg.ends_with(last.as_str())
    {
        return false;
    }
    let mut middle = &seg[first.len()..seg.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match middle.find(piece.as_str()) {
            Some(i) => middle = &middle[i + piece.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(glob: &str, path: &str) -> bool {
        PathGlob::new(glob).matches(path)
    }

    #[test]
    fn star_stays_in_its_segment_and_double_star_spans_segments() {
        assert!(m("/api/orders/*", "/api/orders/7"));
        assert!(!m("/api/orders/*", "/api/orders/7/items"));
        assert!(!m("/api/orders/*", "/api/orders"));
        assert!(m("/api/orders/**", "/api/orders"));
        assert!(m("/api/orders/**", "/api/orders/7/items"));
        assert!(!m("/api/orders/**", "/api/ordersx"));
        assert!(m("/api/**/items", "/api/orders/7/items"));
        assert!(m("/api/**/items", "/api/items"));
        assert!(m("/files/*.json", "/files/a.json"));
        assert!(!m("/files/*.json", "/files/a.jsonx"));
        assert!(m("/a/*b*c", "/a/xbyc"));
        assert!(!m("/a/*b*c", "/a/xcyb"));
    }

    #[test]
    fn otherwise_exact() {
        assert!(m("/healthz", "/healthz"));
        assert!(!m("/healthz", "/healthz/"));
        assert!(!m("/healthz", "/Healthz"));
        assert!(m("/", "/"));
        assert!(m("/**", "/anything/at/all"));
    }
}
