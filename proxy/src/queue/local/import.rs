//! Brings over the jobs of a store written by an earlier kaname (one redb
//! file, `data_dir/jobs.redb`) the first time this one opens `data_dir`:
//! an upgrade must not leave accepted jobs behind in a file nobody reads.
//!
//! Each index is copied as it is, its keys rewritten in [`super::keys`]'s
//! layout, in transactions of a bounded size; the file is renamed to
//! `jobs.redb.imported` once all of it is committed. A crash part way
//! leaves the file in place and the next start copies it again (the same
//! keys and values: nothing doubles).

use std::path::Path;

use fjall::{PersistMode, SingleWriterTxDatabase};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::keys;
use super::Tables;

pub(super) const JOBS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("jobs");
pub(super) const BODIES: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("bodies");
pub(super) const READY: TableDefinition<(&str, u8, u64), &[u8; 16]> = TableDefinition::new("ready");
pub(super) const DELAYED: TableDefinition<(&str, u64, u64), &[u8; 16]> =
    TableDefinition::new("delayed");
pub(super) const PENDING: TableDefinition<(&str, u64), &[u8; 16]> = TableDefinition::new("pending");
pub(super) const DELIVERING: TableDefinition<(&str, u64), &[u8; 16]> =
    TableDefinition::new("delivering");
pub(super) const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8; 16]> =
    TableDefinition::new("idempotency");
pub(super) const EXPIRY: TableDefinition<(u64, &[u8; 16]), ()> = TableDefinition::new("expiry");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Entries per transaction: bounds the memory a large store's copy takes.
pub(super) const CHUNK: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub(super) enum ImportError {
    #[error("reading {0}: {1}")]
    Old(String, redb::Error),
    #[error("writing the new store: {0}")]
    New(#[from] fjall::Error),
    #[error("renaming {0} once copied: {1}")]
    Rename(String, std::io::Error),
}

/// Copies `data_dir/jobs.redb` into `t` when it is there; how many jobs.
pub(super) fn import_redb(
    data_dir: &Path,
    db: &SingleWriterTxDatabase,
    t: &Tables,
) -> Result<u64, ImportError> {
    let path = data_dir.join("jobs.redb");
    if !path.exists() {
        return Ok(0);
    }
    let shown = path.display().to_string();
    let old = |e: redb::Error| ImportError::Old(shown.clone(), e);
    let file = Database::open(&path).map_err(|e| old(e.into()))?;
    let read = file.begin_read().map_err(|e| old(e.into()))?;
    let mut out = Chunked::new(db);
    let mut jobs = 0u64;
    macro_rules! copy {
        ($def:expr, $table:expr, |$k:ident, $v:ident| $key:expr, $value:expr) => {
            match read.open_table($def) {
                Ok(table) => {
                    for entry in table.iter().map_err(|e| old(e.into()))? {
                        let (k, v) = entry.map_err(|e| old(e.into()))?;
                        let ($k, $v) = (k.value(), v.value());
                        out.put(&$table, $key, $value)?;
                    }
                }
                Err(TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(old(e.into())),
            }
        };
    }
    // A job's place in the new store is its seq in the old one (unique,
    // and below every seq the new store gives from the old counter on).
    let bodies = match read.open_table(BODIES) {
        Ok(b) => Some(b),
        Err(TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(old(e.into())),
    };
    match read.open_table(JOBS) {
        Ok(records) => {
            for entry in records.iter().map_err(|e| old(e.into()))? {
                let (k, v) = entry.map_err(|e| old(e.into()))?;
                let (id, record) = (k.value(), v.value());
                let Some(job) = super::decode(record) else {
                    continue;
                };
                let at = job.seq.to_be_bytes().to_vec();
                out.put(&t.ids, id.to_vec(), at.clone())?;
                out.put(&t.jobs, at.clone(), record.to_vec())?;
                if let Some(bodies) = &bodies {
                    if let Some(body) = bodies.get(id).map_err(|e| old(e.into()))? {
                        out.put(&t.bodies, at, body.value().to_vec())?;
                    }
                }
                jobs += 1;
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(old(e.into())),
    }
    copy!(
        READY,
        t.ready,
        |k, v| keys::ready(k.0, k.1, k.2),
        v.to_vec()
    );
    copy!(
        DELAYED,
        t.delayed,
        |k, v| keys::delayed(k.0, k.1, k.2),
        v.to_vec()
    );
    copy!(
        PENDING,
        t.pending,
        |k, v| keys::by_seq(k.0, k.1),
        v.to_vec()
    );
    copy!(
        DELIVERING,
        t.delivering,
        |k, v| keys::by_seq(k.0, k.1),
        v.to_vec()
    );
    copy!(
        IDEMPOTENCY,
        t.idempotency,
        |k, v| keys::idempotency(k.0, k.1),
        v.to_vec()
    );
    copy!(
        EXPIRY,
        t.expiry,
        |k, _v| keys::expiry(k.0, k.1).to_vec(),
        Vec::new()
    );
    copy!(
        META,
        t.meta,
        |k, v| k.as_bytes().to_vec(),
        v.to_be_bytes().to_vec()
    );
    out.commit()?;
    drop(read);
    drop(file);
    let done = data_dir.join("jobs.redb.imported");
    std::fs::rename(&path, &done).map_err(|e| ImportError::Rename(shown.clone(), e))?;
    tracing::info!(from = %shown, jobs, "jobs of the earlier store brought over");
    Ok(jobs)
}

/// Writes in durable transactions of [`CHUNK`] entries.
struct Chunked<'a> {
    db: &'a SingleWriterTxDatabase,
    batch: Vec<(fjall::SingleWriterTxKeyspace, Vec<u8>, Vec<u8>)>,
}

impl<'a> Chunked<'a> {
    fn new(db: &'a SingleWriterTxDatabase) -> Self {
        Chunked {
            db,
            batch: Vec::new(),
        }
    }

    fn put(
        &mut self,
        table: &fjall::SingleWriterTxKeyspace,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), fjall::Error> {
        self.batch.push((table.clone(), key, value));
        if self.batch.len() >= CHUNK {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), fjall::Error> {
        let mut tx = self.db.write_tx().durability(Some(PersistMode::SyncAll));
        for (table, k, v) in self.batch.drain(..) {
            tx.insert(&table, k, v);
        }
        tx.commit()
    }
}
