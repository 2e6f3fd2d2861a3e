//! Durations (`250ms`), sizes (`64KiB`) and rates (`100/s`).

use std::time::Duration;

use crate::types::Rate;

/// `250ms`, `2s`, `5m`, `1h`; a decimal number is allowed (`1.5s`).
pub fn duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = t.split_at(split);
    let unit_secs: f64 = match unit.trim_start() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    if !num.contains('.') {
        let n: u64 = num.parse().ok()?;
        return match unit.trim_start() {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            _ => n.checked_mul(3600).map(Duration::from_secs),
        };
    }
    let n: f64 = num.parse().ok()?;
    Duration::try_from_secs_f64(n * unit_secs).ok()
}

/// Bytes with a unit: `64KiB`, `1MiB`, `1GiB`, `10KB`, `1MB`, `512B`.
pub fn size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `N/s`, `N/m`, `N/h` with N at least 1.
pub fn rate(text: &str) -> Option<Rate> {
    let (count, per) = text.trim().split_once('/')?;
    let count: u32 = count.trim().parse().ok().filter(|c| *c > 0)?;
    let per = match per.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return None,
    };
    Some(Rate { count, per })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(duration("0s"), Some(Duration::ZERO));
        for bad in [
            "fast",
            "2",
            "s",
            "2d",
            "-1s",
            "1.s",
            ".5s",
            "99999999999999999999h",
            "1e3s",
        ] {
            assert_eq!(duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size("64KiB"), Some(65536));
        assert_eq!(size("1MiB"), Some(1 << 20));
        assert_eq!(size("1GiB"), Some(1 << 30));
        assert_eq!(size("10KB"), Some(10_000));
        assert_eq!(size("123"), Some(123));
        for bad in ["", "KiB", "1TiB", "-1", "1.5MiB", "99999999999999GiB"] {
            assert_eq!(size(bad), None, "{bad}");
        }
    }

    #[test]
    fn rates() {
        let r = rate("100/s").unwrap();
        assert_eq!((r.count, r.per), (100, Duration::from_secs(1)));
        assert_eq!(rate("5/m").unwrap().per, Duration::from_secs(60));
        assert_eq!(rate("5/h").unwrap().per, Duration::from_secs(3600));
        for bad in ["0/s", "100", "100/d", "x/s", "/s"] {
            assert_eq!(rate(bad), None, "{bad}");
        }
    }
}
