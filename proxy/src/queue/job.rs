//! A job: a request accepted for later delivery, as it is stored and as
//! `GET /.kaname/jobs/<id>` shows it (async.md).

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// 128 random bits; as text, 22 characters of URL-safe base64. Knowing it
/// is what lets one read the job.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct JobId(pub [u8; 16]);

impl JobId {
    pub fn random() -> JobId {
        JobId(rand::random())
    }

    pub fn parse(text: &str) -> Option<JobId> {
        if text.len() != 22 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        Some(JobId(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum JobStatus {
    Queued,
    Delivering,
    Done,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Delivering => "delivering",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn finished(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A job's priority class: 0 high, 1 normal, 2 low (the order served).
pub type Priority = u8;
pub const HIGH: Priority = 0;
pub const NORMAL: Priority = 1;
pub const LOW: Priority = 2;

pub fn priority_of(word: &str) -> Priority {
    match word.trim() {
        w if w.eq_ignore_ascii_case("high") => HIGH,
        w if w.eq_ignore_ascii_case("low") => LOW,
        // An unknown value is normal (async.md).
        _ => NORMAL,
    }
}

pub fn priority_word(p: Priority) -> &'static str {
    match p {
        HIGH => "high",
        LOW => "low",
        _ => "normal",
    }
}

/// Everything stored of a job but its body (kept apart: status updates do
/// not rewrite it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub queue: String,
    /// Delivered through this upstream's balancer and pool.
    pub upstream: String,
    pub method: String,
    /// Path and query, as forwarded.
    pub target: String,
    /// As they would be forwarded (claim headers in, token and
    /// hop-by-hop out); values as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    pub priority: Priority,
    /// Acceptance order within the store: oldest first.
    pub seq: u64,
    /// While waiting out a retry backoff: when it is due (unix ms).
    pub due_ms: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub status: JobStatus,
    /// Deliveries started, across restarts.
    pub attempts: u32,
    pub result: Option<JobResult>,
    pub error: Option<String>,
    pub callback: Option<String>,
    /// The `Idempotency-Key` and a digest of method, target and body.
    pub idempotency: Option<(String, [u8; 32])>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobResult {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub truncated: bool,
}

impl Job {
    /// The JSON of `GET /.kaname/jobs/<id>` and of a callback.
    pub fn view(&self, id: JobId) -> serde_json::Value {
        use serde_json::json;
        let mut v = json!({
            "job": id.to_string(),
            "queue": self.queue,
            "status": self.status.as_str(),
            "attempts": self.attempts,
            "created": rfc3339(self.created_ms),
            "updated": rfc3339(self.updated_ms),
        });
        if let Some(r) = &self.result {
            let (body, encoding) = match std::str::from_utf8(&r.body) {
                Ok(text) => (text.to_owned(), "utf8"),
                Err(_) => (
                    base64::engine::general_purpose::STANDARD.encode(&r.body),
                    "base64",
                ),
            };
            v["result"] = json!({
                "status": r.status,
                "headers": headers_json(&r.headers),
                "body": body,
                "body_encoding": encoding,
                "truncated": r.truncated,
            });
        }
        if let Some(e) = &self.error {
            v["error"] = json!(e);
        }
        v
    }
}

/// Names to a string, or a list of strings when repeated.
fn headers_json(headers: &[(String, Vec<u8>)]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        let value = serde_json::Value::String(String::from_utf8_lossy(value).into_owned());
        match map.get_mut(name) {
            None => {
                map.insert(name.clone(), value);
            }
            Some(serde_json::Value::Array(list)) => list.push(value),
            Some(first) => {
                let first = first.take();
                map.insert(name.clone(), serde_json::Value::Array(vec![first, value]));
            }
        }
    }
    serde_json::Value::Object(map)
}

/// Unix milliseconds as RFC 3339 UTC (`2026-12-02T03:04:05.678Z`).
pub fn rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_and_refuse_junk() {
        let id = JobId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 22);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(JobId::parse(&text), Some(id));
        assert_ne!(JobId::random(), id);
        for junk in [
            "",
            "short",
            "../../../../etc/passwd",
            &"A".repeat(23),
            "!!!!!!!!!!!!!!!!!!!!!!",
        ] {
            assert_eq!(JobId::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn times_and_priorities() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_180_645_678), "2026-12-02T03:04:05.678Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(priority_of("HIGH"), HIGH);
        assert_eq!(priority_of("low"), LOW);
        assert_eq!(priority_of("urgent!"), NORMAL);
    }

    #[test]
    fn a_view_shows_a_binary_body_as_base64_and_repeated_headers_as_a_list() {
        let job = Job {
            queue: "q".into(),
            upstream: "u".into(),
            method: "POST".into(),
            target: "/x".into(),
            headers: vec![],
            priority: NORMAL,
            seq: 1,
            due_ms: 0,
            created_ms: 0,
            updated_ms: 1000,
            status: JobStatus::Done,
            attempts: 2,
            result: Some(JobResult {
                status: 201,
                headers: vec![
                    ("set-cookie".into(), b"a=1".to_vec()),
                    ("set-cookie".into(), b"b=2".to_vec()),
                    ("x-one".into(), b"1".to_vec()),
                ],
                body: vec![0xff, 0x00],
                truncated: false,
            }),
            error: None,
            callback: None,
            idempotency: None,
        };
        let v = job.view(JobId([7; 16]));
        assert_eq!(v["status"], "done");
        assert_eq!(v["result"]["body_encoding"], "base64");
        assert_eq!(v["result"]["body"], "/wA=");
        assert_eq!(
            v["result"]["headers"]["set-cookie"],
            serde_json::json!(["a=1", "b=2"])
        );
        assert_eq!(v["result"]["headers"]["x-one"], "1");
        assert_eq!(v["updated"], "1970-01-01T00:00:01.000Z");
    }
}
