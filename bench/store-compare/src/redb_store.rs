use crate::store::*;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use std::path::Path;

// Layout "id" (engine `redb-id`): the 1 KiB job record keyed by its random 128-bit id.
const JOBS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("jobs");
// Layout "seq" (engines `redb`, `redb-qr`): the record keyed by seq (appends at the right edge of
// the B-tree: few dirty pages per commit), plus a small id -> seq index.
const JOBS_BY_SEQ: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs_by_seq");
const IDS: TableDefinition<&[u8; 16], u64> = TableDefinition::new("ids");

const WAITING: TableDefinition<(u8, u64), &[u8; 16]> = TableDefinition::new("waiting");
const DELIVERING: TableDefinition<&[u8; 16], (u8, u64)> = TableDefinition::new("delivering");
const RESULTS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("results");
const EXPIRY: TableDefinition<(u64, u64), &[u8; 16]> = TableDefinition::new("expiry");

pub struct RedbStore {
    db: Database,
    by_seq: bool,
    /// redb's quick-repair: the allocator state is saved in every commit (2-phase commit), so a
    /// restart after a crash does not walk the whole file.
    quick_repair: bool,
}

pub fn open(dir: &Path, cache_bytes: usize, by_seq: bool, quick_repair: bool) -> Res<RedbStore> {
    std::fs::create_dir_all(dir)?;
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(dir.join("jobs.redb"))?;
    // make sure every table exists, so readers never see "table does not exist"
    let mut tx = db.begin_write()?;
    tx.set_quick_repair(quick_repair);
    {
        tx.open_table(JOBS)?;
        tx.open_table(JOBS_BY_SEQ)?;
        tx.open_table(IDS)?;
        tx.open_table(WAITING)?;
        tx.open_table(DELIVERING)?;
        tx.open_table(RESULTS)?;
        tx.open_table(EXPIRY)?;
    }
    tx.commit()?;
    Ok(RedbStore { db, by_seq, quick_repair })
}

impl Store for RedbStore {
    fn apply(&mut self, ops: Vec<Op>, durable: bool) -> Res<Vec<OpResult>> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(if durable { Durability::Immediate } else { Durability::None })?;
        if durable {
            tx.set_quick_repair(self.quick_repair);
        }
        let mut out = Vec::with_capacity(ops.len());
        {
            let mut jobs = tx.open_table(JOBS)?;
            let mut jobs_by_seq = tx.open_table(JOBS_BY_SEQ)?;
            let mut ids = tx.open_table(IDS)?;
            let mut waiting = tx.open_table(WAITING)?;
            let mut delivering = tx.open_table(DELIVERING)?;
            let mut results = tx.open_table(RESULTS)?;
            let mut expiry = tx.open_table(EXPIRY)?;
            let now = now_ms();
            for op in ops {
                match op {
                    Op::Put(job) => {
                        if self.by_seq {
                            jobs_by_seq.insert(job.seq, job_value(&job).as_slice())?;
                            ids.insert(&job.id, job.seq)?;
                        } else {
                            jobs.insert(&job.id, job_value(&job).as_slice())?;
                        }
                        waiting.insert((job.prio, job.seq), &job.id)?;
                        out.push(OpResult::Put);
                    }
                    Op::Take => {
                        let first = waiting
                            .pop_first()?
                            .map(|(k, v)| (k.value(), *v.value()));
                        match first {
                            None => out.push(OpResult::Taken(None)),
                            Some(((prio, seq), id)) => {
                                delivering.insert(&id, (prio, seq))?;
                                let body_len = if self.by_seq {
                                    jobs_by_seq.get(seq)?.map(|g| g.value().len())
                                } else {
                                    jobs.get(&id)?.map(|g| g.value().len())
                                }
                                .unwrap_or(0);
                                out.push(OpResult::Taken(Some(Taken { id, prio, seq, body_len })));
                            }
                        }
                    }
                    Op::Finish(id) => {
                        let was = delivering.remove(&id)?.map(|g| g.value());
                        match was {
                            None => out.push(OpResult::Finished(false)),
                            Some((_prio, seq)) => {
                                if self.by_seq {
                                    jobs_by_seq.remove(seq)?;
                                    ids.remove(&id)?;
                                } else {
                                    jobs.remove(&id)?;
                                }
                                results.insert(&id, result_record(seq).as_slice())?;
                                expiry.insert((now + KEEP_FINISHED_MS, seq), &id)?;
                                out.push(OpResult::Finished(true));
                            }
                        }
                    }
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn count_waiting(&mut self) -> Res<u64> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(WAITING)?.len()?)
    }

    fn count_delivering(&mut self) -> Res<u64> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(DELIVERING)?.len()?)
    }

    fn scan_waiting(&mut self) -> Res<u64> {
        let r = self.db.begin_read()?;
        let t = r.open_table(WAITING)?;
        let mut n = 0u64;
        for e in t.iter()? {
            let (k, _v) = e?;
            std::hint::black_box(k.value());
            n += 1;
        }
        Ok(n)
    }

    fn state_of(&mut self, id: &Id) -> Res<State> {
        let r = self.db.begin_read()?;
        if r.open_table(DELIVERING)?.get(id)?.is_some() {
            return Ok(State::Delivering);
        }
        let rec: Option<(u8, u64)> = if self.by_seq {
            match r.open_table(IDS)?.get(id)? {
                Some(s) => r.open_table(JOBS_BY_SEQ)?.get(s.value())?.map(|v| {
                    let v = v.value();
                    (v[0], u64::from_be_bytes(v[1..9].try_into().unwrap()))
                }),
                None => None,
            }
        } else {
            r.open_table(JOBS)?.get(id)?.map(|v| {
                let v = v.value();
                (v[0], u64::from_be_bytes(v[1..9].try_into().unwrap()))
            })
        };
        if let Some((prio, seq)) = rec {
            return Ok(match r.open_table(WAITING)?.get((prio, seq))? {
                Some(g) if g.value() == id => State::Waiting,
                _ => State::Orphan,
            });
        }
        if r.open_table(RESULTS)?.get(id)?.is_some() {
            return Ok(State::Finished);
        }
        Ok(State::Missing)
    }

    fn close(self: Box<Self>) -> Res<()> {
        drop(self.db);
        Ok(())
    }
}
