use crate::store::*;
use fjall::{
    KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace,
};
use std::ops::Bound;
use std::path::Path;

pub struct FjallStore {
    db: SingleWriterTxDatabase,
    jobs: SingleWriterTxKeyspace,
    waiting: SingleWriterTxKeyspace,
    delivering: SingleWriterTxKeyspace,
    results: SingleWriterTxKeyspace,
    expiry: SingleWriterTxKeyspace,
    /// In-memory lower bound of the smallest waiting key (the single writer knows every insert):
    /// lets take_next seek past the tombstones that taking from the head of an LSM index leaves.
    /// (key, inclusive). None = scan from the start. Disabled with FJALL_NO_HINT=1.
    lo: Option<([u8; 9], bool)>,
    use_hint: bool,
}

pub fn open(dir: &Path, cache_bytes: u64) -> Res<FjallStore> {
    std::fs::create_dir_all(dir)?;
    // Bounded memory: 64 MiB block cache (as the others), 16 MiB memtables per keyspace and at
    // most 64 MiB of journal (the minimum), which also bounds the replay after a crash.
    let db = SingleWriterTxDatabase::builder(dir)
        .cache_size(cache_bytes)
        .max_journaling_size(64 * 1024 * 1024)
        .open()?;
    let ks = |n: &str| db.keyspace(n, || KeyspaceCreateOptions::default().max_memtable_size(16 * 1024 * 1024));
    let jobs = ks("jobs")?;
    let waiting = ks("waiting")?;
    let delivering = ks("delivering")?;
    let results = ks("results")?;
    let expiry = ks("expiry")?;
    let use_hint = std::env::var("FJALL_NO_HINT").map(|v| v != "1").unwrap_or(true);
    Ok(FjallStore { db, jobs, waiting, delivering, results, expiry, lo: None, use_hint })
}

impl Store for FjallStore {
    fn apply(&mut self, ops: Vec<Op>, durable: bool) -> Res<Vec<OpResult>> {
        let mut tx = self
            .db
            .write_tx()
            .durability(if durable { Some(PersistMode::SyncAll) } else { None });
        let mut out = Vec::with_capacity(ops.len());
        let now = now_ms();
        let mut lo = self.lo;
        for op in ops {
            match op {
                Op::Put(job) => {
                    let wk = waiting_key(job.prio, job.seq);
                    tx.insert(&self.jobs, job.id, job_value(&job));
                    tx.insert(&self.waiting, wk, job.id);
                    if let Some((l, _)) = lo {
                        if wk <= l {
                            lo = Some((wk, true));
                        }
                    }
                    out.push(OpResult::Put);
                }
                Op::Take => {
                    let first = if self.use_hint {
                        match lo {
                            None => tx.first_key_value(&self.waiting),
                            Some((l, incl)) => {
                                let b = if incl { Bound::Included(l) } else { Bound::Excluded(l) };
                                tx.range(&self.waiting, (b, Bound::Unbounded)).next()
                            }
                        }
                    } else {
                        tx.first_key_value(&self.waiting)
                    };
                    match first {
                        None => out.push(OpResult::Taken(None)),
                        Some(g) => {
                            let (k, v) = g.into_inner()?;
                            let prio = k[0];
                            let seq = u64::from_be_bytes(k[1..9].try_into()?);
                            let id: Id = (&*v).try_into()?;
                            tx.remove(&self.waiting, k.clone());
                            tx.insert(&self.delivering, id, k.clone());
                            let body_len = tx.get(&self.jobs, id)?.map(|b| b.len()).unwrap_or(0);
                            lo = Some(((&*k).try_into()?, false));
                            out.push(OpResult::Taken(Some(Taken { id, prio, seq, body_len })));
                        }
                    }
                }
                Op::Finish(id) => match tx.take(&self.delivering, id)? {
                    None => out.push(OpResult::Finished(false)),
                    Some(k) => {
                        let seq = u64::from_be_bytes(k[1..9].try_into()?);
                        tx.remove(&self.jobs, id);
                        tx.insert(&self.results, id, result_record(seq));
                        tx.insert(&self.expiry, expiry_key(now + KEEP_FINISHED_MS, seq), id);
                        out.push(OpResult::Finished(true));
                    }
                },
            }
        }
        tx.commit()?;
        self.lo = lo;
        Ok(out)
    }

    fn count_waiting(&mut self) -> Res<u64> {
        Ok(self.waiting.inner().len()? as u64)
    }

    fn count_delivering(&mut self) -> Res<u64> {
        Ok(self.delivering.inner().len()? as u64)
    }

    fn scan_waiting(&mut self) -> Res<u64> {
        let mut n = 0;
        for g in self.waiting.inner().iter() {
            std::hint::black_box(g.key()?);
            n += 1;
        }
        Ok(n)
    }

    fn state_of(&mut self, id: &Id) -> Res<State> {
        if self.delivering.get(id)?.is_some() {
            return Ok(State::Delivering);
        }
        if let Some(v) = self.jobs.get(id)? {
            let prio = v[0];
            let seq = u64::from_be_bytes(v[1..9].try_into()?);
            return Ok(match self.waiting.get(waiting_key(prio, seq))? {
                Some(g) if &*g == id => State::Waiting,
                _ => State::Orphan,
            });
        }
        if self.results.get(id)?.is_some() {
            return Ok(State::Finished);
        }
        Ok(State::Missing)
    }

    fn close(self: Box<Self>) -> Res<()> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}
