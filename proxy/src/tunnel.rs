//! An upgraded connection (WebSocket): after a 101, bytes are copied both
//! ways between the client and the upstream until either side ends or
//! nothing moves for `TUNNEL_IDLE`. The tunnel holds the endpoint's
//! connection slot for its life.

use hyper_util::rt::TokioIo;

/// Both ways at once; an idle timer reset by every byte read.
async fn copy_until_idle<A, B>(a: A, b: B, idle: std::time::Duration) -> std::io::Result<()>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (mut abuf, mut bbuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        tokio::select! {
            n = ar.read(&mut abuf), if a_open => match n? {
                0 => { a_open = false; bw.shutdown().await?; }
                n => bw.write_all(&abuf[..n]).await?,
            },
            n = br.read(&mut bbuf), if b_open => match n? {
                0 => { b_open = false; aw.shutdown().await?; }
                n => aw.write_all(&bbuf[..n]).await?,
            },
            _ = tokio::time::sleep(idle) => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "upgraded connection idle"));
            }
        }
    }
    Ok(())
}

/// An upgraded connection that moves no byte either way this long is
/// closed (the default `stream_idle_timeout`).
const TUNNEL_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// Copies bytes both ways between the client and the upstream after a 101,
/// until either side ends or nothing moves for `TUNNEL_IDLE`.
pub async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => {
            if let Err(e) = copy_until_idle(TokioIo::new(c), TokioIo::new(u), TUNNEL_IDLE).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        (c, u) => {
            tracing::debug!(
                client_ok = c.is_ok(),
                upstream_ok = u.is_ok(),
                "upgrade failed"
            );
        }
    }
}
