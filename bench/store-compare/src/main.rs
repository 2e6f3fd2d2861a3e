//! store-compare: redb vs fjall vs SQLite as kaname's durable job store (issue 22).
//!
//!   store-compare all [--engines redb,fjall,sqlite] [--secs 5] [--data DIR] [--out FILE]
//!                     [--jobs-1m N] [--recovery-total N]
//!
//! Internal subcommands (spawned by `all` as child processes of this same binary):
//!   child-write ENGINE DIR ACKED_FILE TOTAL     group-commit writer that gets SIGKILLed
//!   verify      ENGINE DIR ACKED_FILE           fresh process: open, count, check acked jobs
//!   bulk-write  ENGINE DIR TOTAL BATCH          writes TOTAL waiting jobs, then waits for SIGKILL
//!   reopen      ENGINE DIR TOTAL                fresh process: open, count, scan, RSS, disk

mod store;
#[cfg(feature = "fjall")]
mod fjall_store;
#[cfg(feature = "redb")]
mod redb_store;
#[cfg(feature = "sqlite")]
mod sqlite_store;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::*;
use tokio::sync::{mpsc, oneshot};

const CACHE_BYTES: usize = 64 << 20;
const MAX_BATCH: usize = 4096;

fn open_store(engine: &str, dir: &Path) -> Res<Box<dyn Store>> {
    Ok(match engine {
        #[cfg(feature = "redb")]
        "redb" => Box::new(redb_store::open(dir, CACHE_BYTES, true, false)?),
        #[cfg(feature = "redb")]
        "redb-qr" => Box::new(redb_store::open(dir, CACHE_BYTES, true, true)?),
        #[cfg(feature = "redb")]
        "redb-id" => Box::new(redb_store::open(dir, CACHE_BYTES, false, false)?),
        #[cfg(feature = "fjall")]
        "fjall" => Box::new(fjall_store::open(dir, CACHE_BYTES as u64)?),
        #[cfg(feature = "sqlite")]
        "sqlite" => Box::new(sqlite_store::open(dir, (CACHE_BYTES / 1024) as i64)?),
        other => return Err(format!("unknown or disabled engine {other}").into()),
    })
}

// ---------------------------------------------------------------- group commit

type Req = (Op, oneshot::Sender<OpResult>);

#[derive(Default, Debug)]
struct CommitStats {
    commits: u64,
    ops: u64,
    commit_us: Vec<u32>,
}

/// The single committer: everything queued on the channel goes into one write transaction,
/// one fsync, then every sender is acknowledged.
fn spawn_committer(
    mut store: Box<dyn Store>,
) -> (mpsc::Sender<Req>, std::thread::JoinHandle<(Box<dyn Store>, CommitStats)>) {
    let (tx, mut rx) = mpsc::channel::<Req>(8192);
    let h = std::thread::Builder::new()
        .name("committer".into())
        .spawn(move || {
            let mut st = CommitStats::default();
            let mut ops = Vec::with_capacity(MAX_BATCH);
            let mut acks = Vec::with_capacity(MAX_BATCH);
            while let Some((op, ack)) = rx.blocking_recv() {
                ops.push(op);
                acks.push(ack);
                while ops.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok((op, ack)) => {
                            ops.push(op);
                            acks.push(ack);
                        }
                        Err(_) => break,
                    }
                }
                let t = Instant::now();
                let n = ops.len();
                let res = store.apply(std::mem::take(&mut ops), true).expect("commit failed");
                st.commit_us.push(t.elapsed().as_micros() as u32);
                st.commits += 1;
                st.ops += n as u64;
                for (ack, r) in acks.drain(..).zip(res) {
                    let _ = ack.send(r);
                }
            }
            (store, st)
        })
        .unwrap();
    (tx, h)
}

async fn call(tx: &mpsc::Sender<Req>, op: Op) -> OpResult {
    let (otx, orx) = oneshot::channel();
    tx.send((op, otx)).await.expect("committer gone");
    orx.await.expect("committer dropped ack")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------- 1. puts

struct PutResult {
    producers: usize,
    jobs: u64,
    secs: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean_batch: f64,
    commit_p50: f64,
    commit_p99: f64,
    commits: u64,
    cpu_us_per_job: f64,
    write_bytes_per_job: f64,
    probe_fsync_p50: f64,
}

/// Background probe: every 20 ms append 4 KiB to a file of its own and fsync it, to record what
/// an fsync costs on this (shared) machine during the measurement window.
fn fsync_probe(dir: &Path) -> (Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<Vec<u32>>) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let path = dir.join("fsync-probe");
    let h = std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).unwrap();
        let buf = vec![7u8; 4096];
        let mut lat = Vec::new();
        while !st.load(Ordering::Relaxed) {
            f.write_all(&buf).unwrap();
            let t = Instant::now();
            f.sync_all().unwrap();
            lat.push(t.elapsed().as_micros() as u32);
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&path);
        lat.sort_unstable();
        lat
    });
    (stop, h)
}

fn bench_puts(engine: &str, dir: &Path, producers: usize, secs: f64) -> Res<PutResult> {
    let store = open_store(engine, dir)?;
    let (tx, h) = spawn_committer(store);
    let rt = runtime();
    let bodies = Arc::new(BodySource::new());
    let seqs = Arc::new(AtomicU64::new(0));
    let (cpu0, io0) = cpu_and_io();
    let probe_dir = dir.parent().unwrap().to_path_buf();
    let (probe_stop, probe) = fsync_probe(&probe_dir);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut lats: Vec<u32> = rt.block_on(async {
        let mut hs = Vec::new();
        for _ in 0..producers {
            let (tx, bodies, seqs) = (tx.clone(), bodies.clone(), seqs.clone());
            hs.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 16);
                while Instant::now() < deadline {
                    let seq = seqs.fetch_add(1, Ordering::Relaxed);
                    let job = bodies.job(seq);
                    let t = Instant::now();
                    call(&tx, Op::Put(job)).await;
                    lat.push(t.elapsed().as_micros() as u32);
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for h in hs {
            all.extend(h.await.unwrap());
        }
        all
    });
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu1, io1) = cpu_and_io();
    probe_stop.store(true, Ordering::Relaxed);
    let probe_lat = probe.join().unwrap();
    drop(tx);
    let (store, mut st) = h.join().unwrap();
    store.close()?;
    let n = lats.len().max(1) as f64;
    lats.sort_unstable();
    st.commit_us.sort_unstable();
    Ok(PutResult {
        producers,
        jobs: lats.len() as u64,
        secs: elapsed,
        p50: pct(&lats, 0.50),
        p99: pct(&lats, 0.99),
        p999: pct(&lats, 0.999),
        max: pct(&lats, 1.0),
        mean_batch: st.ops as f64 / st.commits.max(1) as f64,
        commit_p50: pct(&st.commit_us, 0.5),
        commit_p99: pct(&st.commit_us, 0.99),
        commits: st.commits,
        cpu_us_per_job: (cpu1 - cpu0) * 1e6 / n,
        write_bytes_per_job: (io1.saturating_sub(io0)).saturating_sub(probe_lat.len() as u64 * 4096) as f64 / n,
        probe_fsync_p50: pct(&probe_lat, 0.5),
    })
}

// ---------------------------------------------------------------- 2. drain

fn load(store: &mut dyn Store, from: u64, n: u64, batch: u64) -> Res<()> {
    let bodies = BodySource::new();
    let mut s = from;
    while s < from + n {
        let end = (s + batch).min(from + n);
        let ops = (s..end).map(|q| Op::Put(bodies.job(q))).collect();
        store.apply(ops, true)?;
        s = end;
    }
    Ok(())
}

/// `consumers` tasks each loop take_next() -> finish() through the group committer (fsync on).
/// Stops when the queue is empty or after `max_secs`. Returns jobs/s.
fn bench_drain_committed(engine: &str, dir: &Path, n: u64, consumers: usize, max_secs: f64) -> Res<(u64, f64)> {
    let mut store = open_store(engine, dir)?;
    load(store.as_mut(), 0, n, 5000)?;
    let (tx, h) = spawn_committer(store);
    let rt = runtime();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(max_secs);
    let done: u64 = rt.block_on(async {
        let mut hs = Vec::new();
        for _ in 0..consumers {
            let tx = tx.clone();
            hs.push(tokio::spawn(async move {
                let mut k = 0u64;
                let mut last: Option<(u8, u64)> = None;
                while Instant::now() < deadline {
                    let t = match call(&tx, Op::Take).await {
                        OpResult::Taken(Some(t)) => t,
                        _ => break,
                    };
                    assert!(t.body_len >= BODY_LEN, "body not read");
                    if consumers == 1 {
                        // strict (priority, seq) order
                        assert!(last.map_or(true, |l| l < (t.prio, t.seq)), "order violated");
                        last = Some((t.prio, t.seq));
                    }
                    match call(&tx, Op::Finish(t.id)).await {
                        OpResult::Finished(true) => {}
                        other => panic!("finish failed: {other:?}"),
                    }
                    k += 1;
                }
                k
            }));
        }
        let mut s = 0;
        for h in hs {
            s += h.await.unwrap();
        }
        s
    });
    let el = start.elapsed().as_secs_f64();
    drop(tx);
    let (store, _st) = h.join().unwrap();
    store.close()?;
    Ok((done, done as f64 / el))
}

/// One thread, take_next()+finish() each in its own transaction, no fsync: the engine's CPU
/// cost of the index operations (and the LSM head-of-queue tombstone effect). Checks order.
fn bench_drain_direct(engine: &str, dir: &Path, n: u64) -> Res<f64> {
    let mut store = open_store(engine, dir)?;
    load(store.as_mut(), 0, n, 5000)?;
    let start = Instant::now();
    let mut last: Option<(u8, u64)> = None;
    let mut k = 0;
    while let Some(t) = store.take_next(false)? {
        assert!(last.map_or(true, |l| l < (t.prio, t.seq)), "order violated");
        last = Some((t.prio, t.seq));
        assert!(store.finish(t.id, false)?);
        k += 1;
    }
    assert_eq!(k, n);
    let el = start.elapsed().as_secs_f64();
    store.close()?;
    Ok(n as f64 / el)
}

// ---------------------------------------------------------------- child processes

fn parse_result(out: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("RESULT ") {
            for kv in rest.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    m.insert(k.to_string(), v.to_string());
                }
            }
        }
    }
    m
}

fn proc_status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (user+system CPU seconds of this process, all threads; bytes this process sent to storage)
fn cpu_and_io() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // after the comm field: state is f[0], utime is f[11], stime f[12] (fields 14 and 15)
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let wb = io
        .lines()
        .find(|l| l.starts_with("write_bytes:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, wb)
}

fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut alloc = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let md = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            if md.is_dir() {
                let (a, b) = dir_size(&e.path());
                apparent += a;
                alloc += b;
            } else {
                apparent += md.len();
                alloc += md.blocks() * 512;
            }
        }
    }
    (apparent, alloc)
}

const LINE: u64 = 21; // "{:020}\n"

/// child-write: 32 producers through the group committer append each acknowledged seq to
/// ACKED (one write(2) per ack, after the ack); one consumer moves jobs to delivering and
/// finishes every other one, so all three states exist when the SIGKILL lands.
fn child_write(engine: &str, dir: &Path, acked: &Path, total: u64) -> Res<()> {
    let store = open_store(engine, dir)?;
    let (tx, _h) = spawn_committer(store);
    let file = Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new().create(true).append(true).open(acked)?,
    ));
    let rt = runtime();
    let bodies = Arc::new(BodySource::new());
    let seqs = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let ctx = tx.clone();
        tokio::spawn(async move {
            loop {
                if let OpResult::Taken(Some(t)) = call(&ctx, Op::Take).await {
                    if t.seq % 2 == 0 {
                        call(&ctx, Op::Finish(t.id)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let mut hs = Vec::new();
        for _ in 0..32 {
            let (tx, bodies, seqs, file) = (tx.clone(), bodies.clone(), seqs.clone(), file.clone());
            hs.push(tokio::spawn(async move {
                loop {
                    let seq = seqs.fetch_add(1, Ordering::Relaxed);
                    if seq >= total {
                        break;
                    }
                    call(&tx, Op::Put(bodies.job(seq))).await;
                    let line = format!("{seq:020}\n");
                    file.lock().unwrap().write_all(line.as_bytes()).unwrap();
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
    });
    println!("DONE (not killed)");
    std::process::exit(0);
}

fn read_acked(acked: &Path) -> Vec<u64> {
    let mut s = String::new();
    std::fs::File::open(acked).unwrap().read_to_string(&mut s).unwrap();
    s.lines().filter(|l| l.len() == 20).filter_map(|l| l.parse().ok()).collect()
}

fn verify(engine: &str, dir: &Path, acked: &Path) -> Res<()> {
    let t0 = Instant::now();
    let mut store = open_store(engine, dir)?;
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let waiting = store.count_waiting()?;
    let count_ms = t1.elapsed().as_secs_f64() * 1e3;
    let delivering = store.count_delivering()?;
    let t2 = Instant::now();
    let scanned = store.scan_waiting()?;
    let scan_ms = t2.elapsed().as_secs_f64() * 1e3;
    assert_eq!(scanned, waiting);
    let acked_seqs = read_acked(acked);
    let mut tally: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &acked_seqs {
        let st = store.state_of(&id_of(*s))?;
        *tally
            .entry(match st {
                State::Waiting => "waiting",
                State::Delivering => "delivering",
                State::Finished => "finished",
                State::Orphan => "orphan",
                State::Missing => "missing",
            })
            .or_default() += 1;
    }
    let rss = proc_status_kb("VmRSS:");
    println!(
        "RESULT open_ms={open_ms:.1} count_ms={count_ms:.1} scan_ms={scan_ms:.1} waiting={waiting} delivering={delivering} \
         acked={} acked_waiting={} acked_delivering={} acked_finished={} orphan={} missing={} rss_kb={rss}",
        acked_seqs.len(),
        tally.get("waiting").unwrap_or(&0),
        tally.get("delivering").unwrap_or(&0),
        tally.get("finished").unwrap_or(&0),
        tally.get("orphan").unwrap_or(&0),
        tally.get("missing").unwrap_or(&0),
    );
    store.close()?;
    Ok(())
}

fn bulk_write(engine: &str, dir: &Path, total: u64, batch: u64) -> Res<()> {
    let mut store = open_store(engine, dir)?;
    let bodies = BodySource::new();
    let t = Instant::now();
    let mut s = 0;
    let mut max_commit_ms: f64 = 0.0;
    while s < total {
        let end = (s + batch).min(total);
        let ops = (s..end).map(|q| Op::Put(bodies.job(q))).collect();
        let tc = Instant::now();
        store.apply(ops, true)?;
        max_commit_ms = max_commit_ms.max(tc.elapsed().as_secs_f64() * 1e3);
        s = end;
        if s % 200_000 == 0 {
            eprintln!("  [{engine}] bulk {s}/{total} rss={} kB", proc_status_kb("VmRSS:"));
        }
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "RESULT write_s={el:.1} jobs_per_s={:.0} max_commit_ms={max_commit_ms:.0} writer_rss_kb={} writer_hwm_kb={}",
        total as f64 / el,
        proc_status_kb("VmRSS:"),
        proc_status_kb("VmHWM:")
    );
    println!("DONE");
    std::io::stdout().flush()?;
    // wait for the SIGKILL (bounded)
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}

fn reopen(engine: &str, dir: &Path, total: u64) -> Res<()> {
    let rss0 = proc_status_kb("VmRSS:");
    let t0 = Instant::now();
    let mut store = open_store(engine, dir)?;
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rss_open = proc_status_kb("VmRSS:");
    let t1 = Instant::now();
    let waiting = store.count_waiting()?;
    let count_ms = t1.elapsed().as_secs_f64() * 1e3;
    let t2 = Instant::now();
    let scanned = store.scan_waiting()?;
    let scan_ms = t2.elapsed().as_secs_f64() * 1e3;
    // a sample of ids must be there
    let mut missing = 0;
    let mut sampled = 0;
    let mut s = 0;
    while s < total {
        sampled += 1;
        if store.state_of(&id_of(s))? != State::Waiting {
            missing += 1;
        }
        s += 997;
    }
    let t3 = Instant::now();
    let mut took = 0;
    for _ in 0..100 {
        if let Some(t) = store.take_next(true)? {
            assert!(store.finish(t.id, true)?);
            took += 1;
        }
    }
    let take_ms = t3.elapsed().as_secs_f64() * 1e3 / took.max(1) as f64;
    let rss = proc_status_kb("VmRSS:");
    let hwm = proc_status_kb("VmHWM:");
    let (apparent, alloc) = dir_size(dir);
    println!(
        "RESULT open_ms={open_ms:.1} count_ms={count_ms:.1} scan_ms={scan_ms:.1} waiting={waiting} scanned={scanned} \
         sampled={sampled} sample_missing={missing} take_finish_fsync_ms={take_ms:.2} rss_start_kb={rss0} rss_after_open_kb={rss_open} \
         rss_kb={rss} hwm_kb={hwm} disk_apparent={apparent} disk_alloc={alloc}"
    );
    store.close()?;
    Ok(())
}

// ---------------------------------------------------------------- 3 + 4 orchestration

fn self_exe() -> PathBuf {
    std::env::current_exe().unwrap()
}

fn run_capture(args: &[&str]) -> Res<BTreeMap<String, String>> {
    let out = Command::new(self_exe()).args(args).stderr(Stdio::inherit()).output()?;
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!("{args:?} failed: {s}").into());
    }
    Ok(parse_result(&s))
}

fn bench_recovery(engine: &str, base: &Path, total: u64, kill_at: u64) -> Res<BTreeMap<String, String>> {
    let dir = fresh_dir(base, &format!("{engine}-recovery"));
    let acked = base.join(format!("{engine}-recovery.acked"));
    let _ = std::fs::remove_file(&acked);
    std::fs::File::create(&acked)?;
    let mut child = Command::new(self_exe())
        .args(["child-write", engine, dir.to_str().unwrap(), acked.to_str().unwrap(), &total.to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    let t = Instant::now();
    loop {
        let n = std::fs::metadata(&acked)?.len() / LINE;
        if n >= kill_at {
            break;
        }
        if let Some(st) = child.try_wait()? {
            return Err(format!("child exited early: {st}").into());
        }
        if t.elapsed() > Duration::from_secs(300) {
            eprintln!("  [{engine}] recovery writer too slow; killing at {n} acks");
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill()?; // SIGKILL
    let st = child.wait()?;
    let write_s = t.elapsed().as_secs_f64();
    let mut m = run_capture(&["verify", engine, dir.to_str().unwrap(), acked.to_str().unwrap()])?;
    m.insert("killed_by".into(), format!("{st}"));
    m.insert("write_s".into(), format!("{write_s:.1}"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&acked);
    Ok(m)
}

fn bench_million(engine: &str, base: &Path, total: u64) -> Res<BTreeMap<String, String>> {
    let dir = fresh_dir(base, &format!("{engine}-1m"));
    let mut child = Command::new(self_exe())
        .args(["bulk-write", engine, dir.to_str().unwrap(), &total.to_string(), "10000"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().unwrap();
    let (ltx, lrx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if ltx.send(l).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        match lrx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                if l == "DONE" {
                    break;
                }
                out.push_str(&l);
                out.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() > deadline {
                    child.kill()?;
                    return Err("bulk writer timed out".into());
                }
                if let Some(st) = child.try_wait()? {
                    return Err(format!("bulk writer died: {st}").into());
                }
            }
            Err(_) => return Err("bulk writer closed stdout".into()),
        }
    }
    child.kill()?; // SIGKILL after the last durable commit, without a clean close
    child.wait()?;
    let mut m = parse_result(&out);
    let (apparent, alloc) = dir_size(&dir);
    m.insert("disk_after_kill_apparent".into(), apparent.to_string());
    m.insert("disk_after_kill_alloc".into(), alloc.to_string());
    for (k, v) in run_capture(&["reopen", engine, dir.to_str().unwrap(), &total.to_string()])? {
        m.insert(format!("re_{k}"), v);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(m)
}

// ---------------------------------------------------------------- main

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(|s| s.as_str())
}

fn g<'a>(m: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    m.get(k).map(|s| s.as_str()).unwrap_or("?")
}

fn mib(m: &BTreeMap<String, String>, k: &str) -> String {
    m.get(k)
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| format!("{:.0}", v / 1048576.0))
        .unwrap_or("?".into())
}

fn kb_mib(m: &BTreeMap<String, String>, k: &str) -> String {
    m.get(k)
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| format!("{:.0}", v / 1024.0))
        .unwrap_or("?".into())
}

fn median(v: &mut Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn all(args: &[String]) -> Res<()> {
    let engines: Vec<String> = arg(args, "--engines")
        .unwrap_or("redb,redb-qr,fjall,sqlite")
        .split(',')
        .map(String::from)
        .collect();
    let secs: f64 = arg(args, "--secs").unwrap_or("5").parse()?;
    let rounds: usize = arg(args, "--rounds").unwrap_or("3").parse()?;
    let kills: usize = arg(args, "--kills").unwrap_or("3").parse()?;
    let base = PathBuf::from(arg(args, "--data").unwrap_or("/work/store-compare-data"));
    let n_1m: u64 = arg(args, "--jobs-1m").unwrap_or("1000000").parse()?;
    let rec_total: u64 = arg(args, "--recovery-total").unwrap_or("200000").parse()?;
    let drain_n: u64 = arg(args, "--drain").unwrap_or("50000").parse()?;
    let only: Vec<String> = arg(args, "--only").unwrap_or("puts,drain,recovery,million").split(',').map(String::from).collect();
    let want = |x: &str| only.iter().any(|o| o == x);
    std::fs::create_dir_all(&base)?;
    let load_start = loadavg();
    let started = Instant::now();

    // ---- 1 + 2: rounds, engines interleaved (rotated each round) so background load hits all alike
    let mut put_res: BTreeMap<(String, usize), Vec<PutResult>> = BTreeMap::new();
    let mut drain_res: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    for r in 0..rounds {
        for i in 0..engines.len() {
            let e = &engines[(i + r) % engines.len()];
            for &p in &[1usize, 32, 128] {
                if !want("puts") {
                    continue;
                }
                let d = fresh_dir(&base, &format!("{e}-puts-{p}"));
                let x = bench_puts(e, &d, p, secs)?;
                let _ = std::fs::remove_dir_all(&d);
                eprintln!(
                    "  round {r} {e} puts p={p}: {:.0}/s p50={:.2} p99={:.2} batch={:.1} cpu_us/job={:.0} bytes/job={:.0} probe_fsync_p50={:.2}",
                    x.jobs as f64 / x.secs, x.p50, x.p99, x.mean_batch, x.cpu_us_per_job, x.write_bytes_per_job, x.probe_fsync_p50
                );
                put_res.entry((e.clone(), p)).or_default().push(x);
            }
            if !want("drain") {
                continue;
            }
            let d = fresh_dir(&base, &format!("{e}-drain"));
            let (n32, r32) = bench_drain_committed(e, &d, drain_n, 32, 60.0)?;
            assert_eq!(n32, drain_n, "32-consumer drain did not finish in 60 s");
            let d = fresh_dir(&base, &format!("{e}-drain"));
            let (_n1, r1) = bench_drain_committed(e, &d, drain_n, 1, secs)?;
            let d = fresh_dir(&base, &format!("{e}-drain"));
            let rd = bench_drain_direct(e, &d, drain_n)?;
            let _ = std::fs::remove_dir_all(&d);
            eprintln!("  round {r} {e} drain: 32c={r32:.0}/s 1c={r1:.0}/s direct={rd:.0}/s");
            drain_res.entry((e.clone(), 32)).or_default().push(r32);
            drain_res.entry((e.clone(), 1)).or_default().push(r1);
            drain_res.entry((e.clone(), 0)).or_default().push(rd);
        }
    }
    let mut puts = String::from(
        "| engine | producers | accepted jobs/s (median) | min–max | ack p50 ms | ack p99 ms (median) | p99 min–max | p99.9 ms | max ms | jobs/commit | commit p50 ms | commit p99 ms | CPU µs/job | bytes written/job | probe fsync p50 ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for e in &engines {
        for &p in &[1usize, 32, 128] {
            let Some(v) = put_res.get(&(e.clone(), p)) else { continue };
            let f = |g: &dyn Fn(&PutResult) -> f64| -> Vec<f64> { v.iter().map(g).collect() };
            let mut rate = f(&|x| x.jobs as f64 / x.secs);
            let mut p99 = f(&|x| x.p99);
            let (rmin, rmax) = (rate.iter().cloned().fold(f64::MAX, f64::min), rate.iter().cloned().fold(0.0, f64::max));
            let (pmin, pmax) = (p99.iter().cloned().fold(f64::MAX, f64::min), p99.iter().cloned().fold(0.0, f64::max));
            puts.push_str(&format!(
                "| {e} | {p} | **{:.0}** | {rmin:.0}–{rmax:.0} | {:.2} | **{:.2}** | {pmin:.2}–{pmax:.2} | {:.2} | {:.1} | {:.1} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} |\n",
                median(&mut rate),
                median(&mut f(&|x| x.p50)),
                median(&mut p99),
                median(&mut f(&|x| x.p999)),
                f(&|x| x.max).iter().cloned().fold(0.0, f64::max),
                median(&mut f(&|x| x.mean_batch)),
                median(&mut f(&|x| x.commit_p50)),
                median(&mut f(&|x| x.commit_p99)),
                median(&mut f(&|x| x.cpu_us_per_job)),
                median(&mut f(&|x| x.write_bytes_per_job)),
                median(&mut f(&|x| x.probe_fsync_p50)),
            ));
        }
    }
    let mut drains = String::from(
        "| engine | 32 consumers via group committer, fsync (jobs/s) | 1 consumer, fsync per op (jobs/s) | 1 thread, own txn per op, no fsync (jobs/s) |\n|---|---|---|---|\n",
    );
    for e in &engines {
        if !drain_res.contains_key(&(e.clone(), 0)) {
            continue;
        }
        let c = |k: usize| {
            let mut v = drain_res[&(e.clone(), k)].clone();
            let (lo, hi) = (v.iter().cloned().fold(f64::MAX, f64::min), v.iter().cloned().fold(0.0, f64::max));
            format!("**{:.0}** ({lo:.0}–{hi:.0})", median(&mut v))
        };
        drains.push_str(&format!("| {e} | {} | {} | {} |\n", c(32), c(1), c(0)));
    }
    eprintln!("{puts}\n{drains}");

    // ---- 3: kill -9 during writes
    let mut recov = String::from(
        "| engine | kill | acked at kill | open ms | count ms | scan ms | waiting | delivering | acked → waiting/delivering/finished | orphan | **missing** | verifier RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for k in 0..if want("recovery") { kills } else { 0 } {
        for i in 0..engines.len() {
            let e = &engines[(i + k) % engines.len()];
            let m = bench_recovery(e, &base, rec_total, rec_total / 2)?;
            let line = format!(
                "| {e} | {} | {} | {} | {} | {} | {} | {} | {}/{}/{} | {} | **{}** | {} |\n",
                k + 1, g(&m, "acked"), g(&m, "open_ms"), g(&m, "count_ms"), g(&m, "scan_ms"), g(&m, "waiting"),
                g(&m, "delivering"), g(&m, "acked_waiting"), g(&m, "acked_delivering"), g(&m, "acked_finished"),
                g(&m, "orphan"), g(&m, "missing"), kb_mib(&m, "rss_kb")
            );
            eprint!("{line}");
            recov.push_str(&line);
        }
    }
    let mut lines: Vec<&str> = recov.lines().collect();
    let (head, body) = lines.split_at_mut(2);
    body.sort_by_key(|l| l.split('|').nth(1).map(|s| s.trim().to_string()));
    let recov = head.iter().chain(body.iter()).map(|l| format!("{l}\n")).collect::<String>();

    // ---- 4: 1,000,000 waiting jobs
    let mut million = String::from(
        "| engine | bulk write jobs/s (10k jobs/txn) | writer peak RSS MiB | open after kill -9 ms | count ms | full scan ms | RSS after open MiB | RSS after reopen+scan+verify MiB (peak) | disk MiB (allocated) | sample missing | take+finish, fsync each, ms |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    if n_1m > 0 && want("million") {
        for e in &engines {
            eprintln!("== {e}: {n_1m} waiting jobs");
            let m = bench_million(e, &base, n_1m)?;
            let line = format!(
                "| {e} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {}/{} | {} |\n",
                g(&m, "jobs_per_s"), kb_mib(&m, "writer_hwm_kb"), g(&m, "re_open_ms"), g(&m, "re_count_ms"),
                g(&m, "re_scan_ms"), kb_mib(&m, "re_rss_after_open_kb"), kb_mib(&m, "re_rss_kb"), kb_mib(&m, "re_hwm_kb"),
                mib(&m, "re_disk_alloc"), g(&m, "re_sample_missing"), g(&m, "re_sampled"), g(&m, "re_take_finish_fsync_ms")
            );
            eprint!("{line}");
            million.push_str(&line);
        }
    }
    let report = format!(
        "Run: {rounds} rounds × {secs} s per put measurement (engines interleaved), {kills} kills per engine; \
         load average at start {load_start}, at end {}; took {:.0} s.\n\n\
         ### 1. Accepted jobs (put through the group committer, fsync on, 1 KiB bodies)\n\n{puts}\n\
         ### 2. take_next()+finish() draining {drain_n} jobs\n\n{drains}\n\
         ### 3. Recovery: {rec_total} jobs being written (32 producers + 1 consumer), SIGKILL at {} acks, fresh process opens and verifies every acked job\n\n{recov}\n\
         ### 4. {n_1m} waiting jobs: bulk write, SIGKILL (no clean close), reopen in a fresh process\n\n{million}",
        loadavg(),
        started.elapsed().as_secs_f64(),
        rec_total / 2
    );
    println!("{report}");
    if let Some(out) = arg(args, "--out") {
        std::fs::write(out, &report)?;
    }
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let p = |i: usize| PathBuf::from(&args[i]);
    match args.get(1).map(|s| s.as_str()) {
        Some("all") => all(&args),
        Some("child-write") => child_write(&args[2], &p(3), &p(4), args[5].parse()?),
        Some("verify") => verify(&args[2], &p(3), &p(4)),
        Some("bulk-write") => bulk_write(&args[2], &p(3), args[4].parse()?, args[5].parse()?),
        Some("reopen") => reopen(&args[2], &p(3), args[4].parse()?),
        Some("drain") => {
            // drain ENGINE N DIR: the no-fsync single-thread drain alone (FJALL_NO_HINT=1 to compare)
            let d = fresh_dir(&p(4), &format!("{}-drain", args[2]));
            let r = bench_drain_direct(&args[2], &d, args[3].parse()?)?;
            println!("{} drain direct: {r:.0} jobs/s", args[2]);
            let _ = std::fs::remove_dir_all(&d);
            Ok(())
        }
        Some("puts") => {
            // puts ENGINE PRODUCERS SECS DIR: one put measurement (for strace / perf)
            let d = fresh_dir(&p(5), &format!("{}-puts", args[2]));
            let r = bench_puts(&args[2], &d, args[3].parse()?, args[4].parse()?)?;
            println!(
                "{} producers={} jobs/s={:.0} p50={:.2} p99={:.2} max={:.1} jobs/commit={:.1} commit_p50={:.2} commit_p99={:.2} commits={} cpu_us/job={:.0} written_bytes/job={:.0}",
                args[2], r.producers, r.jobs as f64 / r.secs, r.p50, r.p99, r.max, r.mean_batch, r.commit_p50, r.commit_p99, r.commits, r.cpu_us_per_job, r.write_bytes_per_job
            );
            let _ = std::fs::remove_dir_all(&d);
            Ok(())
        }
        _ => {
            eprintln!("usage: store-compare all [--engines redb,fjall,sqlite] [--secs 5] [--data DIR] [--out FILE]");
            std::process::exit(2)
        }
    }
}
