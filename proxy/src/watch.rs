//! Reload on file change. The directory is watched, not the file (trap 13):
//! editors save by rename and Kubernetes swaps a ConfigMap by moving a
//! symlink, and both replace the file a file watch would follow. Any event
//! in the directory makes us read the file; only a change of its contents
//! reloads, after a short debounce so a burst of events is one reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::app::App;

const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches the config file's directory for as long as the returned watcher lives.
pub fn spawn(app: Arc<App>) -> Option<RecommendedWatcher> {
    let file = PathBuf::from(&app.file);
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let name = file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            if !e.kind.is_access() && e.paths.iter().any(|p| concerns_config(p, &name)) {
                let _ = tx.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /reload");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP or POST /reload");
        return None;
    }
    tokio::spawn(run(app, file, rx));
    Some(watcher)
}

async fn run(app: Arc<App>, file: PathBuf, mut events: mpsc::UnboundedReceiver<()>) {
    let mut last = contents(&file).await;
    while events.recv().await.is_some() {
        // Debounce: wait until the directory has been quiet for a moment.
        loop {
            match tokio::time::timeout(DEBOUNCE, events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let now = contents(&file).await;
        if now.is_none() || now == last {
            // Deleted (mid-swap) or unchanged: nothing to do yet.
            continue;
        }
        last = now;
        tracing::info!(file = %file.display(), "config file changed");
        let _ = app.reload().await;
    }
}

/// Events on the file itself, or on Kubernetes' `..data` symlink swap;
/// other files in the directory (logs, say) are none of our business.
fn concerns_config(path: &Path, name: &std::ffi::OsStr) -> bool {
    match path.file_name() {
        Some(n) => n == name || n.as_encoded_bytes().starts_with(b".."),
        None => false,
    }
}

async fn contents(file: &Path) -> Option<Vec<u8>> {
    tokio::fs::read(file).await.ok()
}
