//! Certificate rotation: the files of a TLS section are polled and, when
//! their contents change, loaded again and swapped in for new handshakes.
//!
//! Polling rather than inotify: cert-manager and Kubernetes secret volumes
//! swap files through a `..data` symlink, editors save by rename, and
//! comparing contents catches all of these with no event-kind filtering.
//! The files are a few KiB, read once a second. A file that does not load
//! (half-written, key not matching yet, expired) keeps the running
//! certificate; the reason is logged, and the next change is tried again.

use std::sync::Arc;
use std::time::Duration;

const POLL: Duration = Duration::from_secs(1);

/// Something built from TLS files that can load them again.
pub trait Reload: Send + Sync + 'static {
    /// The files to watch.
    fn files(&self) -> Vec<String>;
    /// Loads the files and swaps the result in; on error nothing changes.
    fn reload(&self) -> Result<(), String>;
    /// `listener "in"`, for the logs.
    fn describe(&self) -> String;
}

/// Polls `target`'s files for as long as `target` lives.
pub fn spawn<T: Reload>(target: &Arc<T>) {
    let weak = Arc::downgrade(target);
    let files = target.files();
    tokio::spawn(async move {
        let mut last = snapshot(&files).await;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(target) = weak.upgrade() else {
                return;
            };
            let now = snapshot(&files).await;
            if now == last {
                continue;
            }
            last = now;
            match target.reload() {
                Ok(()) => tracing::info!(
                    "{}: TLS files changed; new handshakes use them",
                    target.describe()
                ),
                Err(e) => tracing::warn!(
                    "{}: TLS files changed but do not load, keeping the previous ones: {e}",
                    target.describe()
                ),
            }
        }
    });
}

async fn snapshot(files: &[String]) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        out.push(tokio::fs::read(f).await.ok());
    }
    out
}
