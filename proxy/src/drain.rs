//! Graceful drain of client connections: a signal every connection
//! watches, and a count of the connections still open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

struct Inner {
    signal: watch::Sender<bool>,
    open: AtomicUsize,
    closed: Notify,
}

/// Held by each open connection.
pub struct ConnectionToken {
    inner: Arc<Inner>,
}

impl Drop for ConnectionToken {
    fn drop(&mut self) {
        if self.inner.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.closed.notify_waiters();
        }
    }
}

impl Drain {
    pub fn new() -> Self {
        Drain {
            inner: Arc::new(Inner {
                signal: watch::channel(false).0,
                open: AtomicUsize::new(0),
                closed: Notify::new(),
            }),
        }
    }

    /// Registers a connection; it should close gracefully once `draining`
    /// resolves.
    pub fn connection(&self) -> (ConnectionToken, watch::Receiver<bool>) {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        (
            ConnectionToken {
                inner: self.inner.clone(),
            },
            self.inner.signal.subscribe(),
        )
    }

    /// Tells every connection to finish its requests and close, then waits
    /// until none is open.
    pub async fn drain(&self) {
        self.inner.signal.send_replace(true);
        loop {
            let closed = self.inner.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.inner.open.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_connections() {
        let d = Drain::new();
        let (token, mut rx) = d.connection();
        let task = tokio::spawn(async move {
            rx.wait_for(|v| *v).await.unwrap();
            drop(token);
        });
        d.drain().await;
        task.await.unwrap();
        assert_eq!(d.inner.open.load(Ordering::Acquire), 0);
    }
}
