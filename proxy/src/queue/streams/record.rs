//! A job's hash on Redis read back as a [`Job`]: the record stored at
//! acceptance, with the fields the scripts change (status, attempts,
//! times, error, result) laid over it.

use super::super::job::{Job, JobResult, JobStatus};

/// The hash fields read, in this order (HMGET).
pub const FIELDS: [&str; 7] = [
    "job", "status", "attempts", "updated", "error", "result", "due",
];

/// HMGET's answer for [`FIELDS`]; None when the job is unknown (or its
/// record unreadable).
pub fn job_of(values: &[Option<Vec<u8>>]) -> Option<Job> {
    let [Some(record), Some(status), attempts, updated, error, result, due] = values else {
        return None;
    };
    let mut job: Job = postcard::from_bytes(record).ok()?;
    job.status = status_of(status)?;
    job.attempts = number(attempts)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    job.updated_ms = number(updated).unwrap_or(job.created_ms);
    job.error = error
        .as_ref()
        .map(|e| String::from_utf8_lossy(e).into_owned());
    job.result = result
        .as_ref()
        .and_then(|r| postcard::from_bytes::<JobResult>(r).ok());
    job.due_ms = number(due).unwrap_or(0);
    Some(job)
}

pub fn status_of(word: &[u8]) -> Option<JobStatus> {
    Some(match word {
        b"queued" => JobStatus::Queued,
        b"delivering" => JobStatus::Delivering,
        b"done" => JobStatus::Done,
        b"failed" => JobStatus::Failed,
        b"cancelled" => JobStatus::Cancelled,
        _ => return None,
    })
}

fn number(v: &Option<Vec<u8>>) -> Option<u64> {
    std::str::from_utf8(v.as_deref()?).ok()?.parse().ok()
}

/// The record as stored at acceptance.
pub fn encode(job: &Job) -> Vec<u8> {
    postcard::to_allocvec(job).unwrap_or_default()
}

pub fn encode_result(result: &JobResult) -> Vec<u8> {
    postcard::to_allocvec(result).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::job::NORMAL;

    #[test]
    fn a_hash_reads_back_with_the_scripts_fields_over_the_record() {
        let job = Job {
            queue: "q".into(),
            upstream: "u".into(),
            method: "POST".into(),
            target: "/x".into(),
            headers: vec![("a".into(), b"1".to_vec())],
            priority: NORMAL,
            seq: 0,
            due_ms: 0,
            created_ms: 5,
            updated_ms: 5,
            status: JobStatus::Queued,
            attempts: 0,
            result: None,
            error: None,
            callback: None,
            idempotency: None,
        };
        let result = JobResult {
            status: 201,
            headers: vec![],
            body: b"ok".to_vec(),
            truncated: false,
        };
        let read = job_of(&[
            Some(encode(&job)),
            Some(b"done".to_vec()),
            Some(b"2".to_vec()),
            Some(b"9".to_vec()),
            None,
            Some(encode_result(&result)),
            None,
        ])
        .expect("a job");
        assert_eq!(read.status, JobStatus::Done);
        assert_eq!((read.attempts, read.updated_ms), (2, 9));
        assert_eq!(read.result, Some(result));
        assert_eq!(read.headers, job.headers);
        // Unknown (all nil) or junk: no job.
        assert!(job_of(&[None, None, None, None, None, None, None]).is_none());
        assert!(job_of(&[
            Some(b"junk".to_vec()),
            Some(b"queued".to_vec()),
            None,
            None,
            None,
            None,
            None
        ])
        .is_none());
    }
}
