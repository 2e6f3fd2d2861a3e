//! The one small interface every engine implements, and the data shared by all.
//!
//! Schema (the same in each engine):
//! - jobs:       id[16] -> prio u8 | seq u64 BE | body          (the immutable request)
//! - waiting:    (prio u8, seq u64) -> id[16]                     (ordered: high=0 first, oldest first)
//! - delivering: id[16] -> (prio u8, seq u64)
//! - results:    id[16] -> small result record                    (the finished job)
//! - expiry:     (expire_at_ms u64, seq u64) -> id[16]            (finished-job expiry)

use std::error::Error;

pub type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

pub type Id = [u8; 16];

#[derive(Clone, Debug)]
pub struct Job {
    pub id: Id,
    pub prio: u8,
    pub seq: u64,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub enum Op {
    Put(Job),
    /// take_next(): the first waiting job moves to delivering (and its body is read)
    Take,
    Finish(Id),
}

#[derive(Debug, Clone)]
pub struct Taken {
    pub id: Id,
    pub prio: u8,
    pub seq: u64,
    pub body_len: usize,
}

#[derive(Debug, Clone)]
pub enum OpResult {
    Put,
    Taken(Option<Taken>),
    Finished(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Waiting,
    Delivering,
    Finished,
    /// job record present but in neither index (would never be delivered)
    Orphan,
    Missing,
}

pub trait Store: Send {
    /// Apply all ops in ONE write transaction; commit with fsync when `durable`.
    fn apply(&mut self, ops: Vec<Op>, durable: bool) -> Res<Vec<OpResult>>;
    /// Number of entries in the waiting index (engine's cheapest exact way).
    fn count_waiting(&mut self) -> Res<u64>;
    fn count_delivering(&mut self) -> Res<u64>;
    /// Iterate the whole waiting index in order (what a restart would do to rebuild gauges).
    fn scan_waiting(&mut self) -> Res<u64>;
    fn state_of(&mut self, id: &Id) -> Res<State>;
    /// Clean close (fjall/sqlite flush on drop; here explicit).
    fn close(self: Box<Self>) -> Res<()>;

    fn take_next(&mut self, durable: bool) -> Res<Option<Taken>> {
        match self.apply(vec![Op::Take], durable)?.pop() {
            Some(OpResult::Taken(t)) => Ok(t),
            _ => Err("bad result".into()),
        }
    }
    fn finish(&mut self, id: Id, durable: bool) -> Res<bool> {
        match self.apply(vec![Op::Finish(id)], durable)?.pop() {
            Some(OpResult::Finished(b)) => Ok(b),
            _ => Err("bad result".into()),
        }
    }
}

pub const KEEP_FINISHED_MS: u64 = 24 * 3600 * 1000;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// ~100-byte result record kept for a finished job.
pub fn result_record(seq: u64) -> Vec<u8> {
    let s = format!(
        "{{\"status\":200,\"seq\":{seq},\"headers\":{{\"content-type\":\"application/json\"}},\"body\":\"ok\"}}"
    );
    s.into_bytes()
}

pub fn job_value(job: &Job) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + job.body.len());
    v.push(job.prio);
    v.extend_from_slice(&job.seq.to_be_bytes());
    v.extend_from_slice(&job.body);
    v
}

pub fn waiting_key(prio: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prio;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn expiry_key(expire_at: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&expire_at.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random-looking 128-bit id, derived from seq so the verifier can recompute it.
pub fn id_of(seq: u64) -> Id {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&splitmix64(seq).to_be_bytes());
    id[8..].copy_from_slice(&splitmix64(seq ^ 0xA5A5_5A5A_DEAD_BEEF).to_be_bytes());
    id
}

/// 20% high (0), 60% normal (1), 20% low (2).
pub fn prio_of(seq: u64) -> u8 {
    match splitmix64(seq.wrapping_mul(31)) % 10 {
        0 | 1 => 0,
        2..=7 => 1,
        _ => 2,
    }
}

pub const BODY_LEN: usize = 1024;

/// 64 KiB of incompressible bytes; each body is a 1 KiB window of it with the seq stamped in.
pub struct BodySource {
    buf: Vec<u8>,
}

impl BodySource {
    pub fn new() -> Self {
        let mut buf = vec![0u8; 64 * 1024];
        let mut x = 0x1234_5678_9abc_def0u64;
        for chunk in buf.chunks_mut(8) {
            x = splitmix64(x);
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        BodySource { buf }
    }
    pub fn job(&self, seq: u64) -> Job {
        let off = ((seq.wrapping_mul(97)) % (self.buf.len() - BODY_LEN) as u64) as usize;
        let mut body = self.buf[off..off + BODY_LEN].to_vec();
        body[..8].copy_from_slice(&seq.to_be_bytes());
        Job { id: id_of(seq), prio: prio_of(seq), seq, body }
    }
}
