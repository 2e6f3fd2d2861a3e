use crate::store::*;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct SqliteStore {
    conn: Connection,
    synchronous_full: bool,
    /// optional background checkpointer (SQLITE_CHECKPOINT=bg)
    checkpointer: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

pub fn open(dir: &Path, cache_kib: i64) -> Res<SqliteStore> {
    std::fs::create_dir_all(dir)?;
    let conn = Connection::open(dir.join("jobs.sqlite"))?;
    // WAL + synchronous=FULL: every COMMIT fsyncs the WAL.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    assert_eq!(mode.to_lowercase(), "wal");
    conn.execute_batch(&format!(
        "PRAGMA synchronous=FULL;
         PRAGMA cache_size=-{cache_kib};
         PRAGMA journal_size_limit=67108864;
         CREATE TABLE IF NOT EXISTS jobs(id BLOB PRIMARY KEY, prio INTEGER NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS waiting(prio INTEGER NOT NULL, seq INTEGER NOT NULL, id BLOB NOT NULL, PRIMARY KEY(prio, seq)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS delivering(id BLOB PRIMARY KEY, prio INTEGER NOT NULL, seq INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS results(id BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS expiry(expire_at INTEGER NOT NULL, seq INTEGER NOT NULL, id BLOB NOT NULL, PRIMARY KEY(expire_at, seq)) WITHOUT ROWID;"
    ))?;
    // Default: SQLite's own auto-checkpoint (every 1000 WAL pages, run by the committing
    // connection). SQLITE_CHECKPOINT=bg moves it to a thread doing PASSIVE checkpoints, which
    // lowers commit p99 a little but lets the WAL grow without bound under sustained writes
    // (checkpoint starvation: 2.9 GiB of WAL after 1M jobs in run 1).
    let bg = std::env::var("SQLITE_CHECKPOINT").map(|v| v == "bg").unwrap_or(false);
    if std::env::var("SQLITE_CHECKPOINT").as_deref() == Ok("none") {
        // experiment only: no checkpoint at all (WAL grows), to see what checkpoints cost
        conn.execute_batch("PRAGMA wal_autocheckpoint=0")?;
    }
    let checkpointer = if bg {
        conn.execute_batch("PRAGMA wal_autocheckpoint=0")?;
        let stop = Arc::new(AtomicBool::new(false));
        let c = Connection::open(dir.join("jobs.sqlite"))?;
        c.execute_batch("PRAGMA synchronous=FULL")?;
        let st = stop.clone();
        let h = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    // PASSIVE: copies committed WAL frames into the db without blocking the writer;
                    // the writer restarts the WAL from the beginning once it is fully checkpointed.
                    let _ = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            })?;
        Some((stop, h))
    } else {
        None
    };
    Ok(SqliteStore { conn, synchronous_full: true, checkpointer })
}

impl Store for SqliteStore {
    fn apply(&mut self, ops: Vec<Op>, durable: bool) -> Res<Vec<OpResult>> {
        if durable != self.synchronous_full {
            self.conn
                .execute_batch(if durable { "PRAGMA synchronous=FULL" } else { "PRAGMA synchronous=OFF" })?;
            self.synchronous_full = durable;
        }
        let now = now_ms() as i64;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(ops.len());
        {
            let mut ins_job = tx.prepare_cached("INSERT INTO jobs(id, prio, seq, body) VALUES (?1, ?2, ?3, ?4)")?;
            let mut ins_wait = tx.prepare_cached("INSERT INTO waiting(prio, seq, id) VALUES (?1, ?2, ?3)")?;
            let mut first = tx.prepare_cached("SELECT prio, seq, id FROM waiting ORDER BY prio, seq LIMIT 1")?;
            let mut del_wait = tx.prepare_cached("DELETE FROM waiting WHERE prio = ?1 AND seq = ?2")?;
            let mut ins_deliv = tx.prepare_cached("INSERT INTO delivering(id, prio, seq) VALUES (?1, ?2, ?3)")?;
            let mut body = tx.prepare_cached("SELECT body FROM jobs WHERE id = ?1")?;
            let mut del_deliv = tx.prepare_cached("DELETE FROM delivering WHERE id = ?1 RETURNING seq")?;
            let mut del_job = tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?;
            let mut ins_res = tx.prepare_cached("INSERT INTO results(id, data) VALUES (?1, ?2)")?;
            let mut ins_exp = tx.prepare_cached("INSERT INTO expiry(expire_at, seq, id) VALUES (?1, ?2, ?3)")?;
            for op in ops {
                match op {
                    Op::Put(job) => {
                        ins_job.execute(params![&job.id[..], job.prio, job.seq as i64, &job.body])?;
                        ins_wait.execute(params![job.prio, job.seq as i64, &job.id[..]])?;
                        out.push(OpResult::Put);
                    }
                    Op::Take => {
                        let row: Option<(u8, i64, Vec<u8>)> =
                            first.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
                        match row {
                            None => out.push(OpResult::Taken(None)),
                            Some((prio, seq, id)) => {
                                del_wait.execute(params![prio, seq])?;
                                ins_deliv.execute(params![&id, prio, seq])?;
                                let b: Option<Vec<u8>> = body.query_row([&id], |r| r.get(0)).optional()?;
                                out.push(OpResult::Taken(Some(Taken {
                                    id: id.as_slice().try_into()?,
                                    prio,
                                    seq: seq as u64,
                                    body_len: b.map(|b| b.len()).unwrap_or(0),
                                })));
                            }
                        }
                    }
                    Op::Finish(id) => {
                        let seq: Option<i64> = del_deliv.query_row([&id[..]], |r| r.get(0)).optional()?;
                        match seq {
                            None => out.push(OpResult::Finished(false)),
                            Some(seq) => {
                                del_job.execute([&id[..]])?;
                                ins_res.execute(params![&id[..], result_record(seq as u64)])?;
                                ins_exp.execute(params![now + KEEP_FINISHED_MS as i64, seq, &id[..]])?;
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
        let n: i64 = self.conn.query_row("SELECT count(*) FROM waiting", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn count_delivering(&mut self) -> Res<u64> {
        let n: i64 = self.conn.query_row("SELECT count(*) FROM delivering", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn scan_waiting(&mut self) -> Res<u64> {
        let mut st = self.conn.prepare("SELECT prio, seq FROM waiting ORDER BY prio, seq")?;
        let mut rows = st.query([])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let s: i64 = r.get(1)?;
            std::hint::black_box(s);
            n += 1;
        }
        Ok(n)
    }

    fn state_of(&mut self, id: &Id) -> Res<State> {
        let c = &self.conn;
        if c.prepare_cached("SELECT 1 FROM delivering WHERE id = ?1")?.exists([&id[..]])? {
            return Ok(State::Delivering);
        }
        let j: Option<(u8, i64)> = c
            .prepare_cached("SELECT prio, seq FROM jobs WHERE id = ?1")?
            .query_row([&id[..]], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((prio, seq)) = j {
            let w: Option<Vec<u8>> = c
                .prepare_cached("SELECT id FROM waiting WHERE prio = ?1 AND seq = ?2")?
                .query_row(params![prio, seq], |r| r.get(0))
                .optional()?;
            return Ok(if w.as_deref() == Some(&id[..]) { State::Waiting } else { State::Orphan });
        }
        if c.prepare_cached("SELECT 1 FROM results WHERE id = ?1")?.exists([&id[..]])? {
            return Ok(State::Finished);
        }
        Ok(State::Missing)
    }

    fn close(self: Box<Self>) -> Res<()> {
        if let Some((stop, h)) = self.checkpointer {
            stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
        self.conn.close().map_err(|(_, e)| e)?;
        Ok(())
    }
}
