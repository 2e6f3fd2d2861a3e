//! Sockets for the test servers: a port where connections are refused, held
//! for as long as a test needs it, and the accept loop every test server
//! shares.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// An address on 127.0.0.1 where nothing listens, for as long as this
/// lives: a socket bound to a port the kernel picked, never listening.
/// Linux answers a SYN to it with RST (connection refused), and no other
/// socket can take the port meanwhile, as one could a port bound, read and
/// released.
pub struct ClosedPort {
    socket: TcpSocket,
    pub addr: SocketAddr,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind 127.0.0.1:0");
        let addr = socket.local_addr().expect("local_addr");
        ClosedPort { socket, addr }
    }

    /// Holds `addr`, the address of a server just stopped: with
    /// `SO_REUSEADDR`, as its listener had, since that server's connections
    /// may still be closing (or in TIME_WAIT) on the port.
    pub fn at(addr: SocketAddr) -> ClosedPort {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(addr)
            .unwrap_or_else(|e| panic!("hold {addr} after its server stopped: {e}"));
        ClosedPort { socket, addr }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Starts listening on the held port: a server comes up where
    /// connections were refused until now.
    pub fn listen(self) -> TcpListener {
        let addr = self.addr;
        self.socket
            .listen(1024)
            .unwrap_or_else(|e| panic!("listen on {addr}: {e}"))
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// A listener on 127.0.0.1, on a port the kernel picks.
pub async fn bind_loopback(what: &str) -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind {what}: {e}"))
}

/// Accepts on `listener` until the returned task is aborted; each
/// connection is given to `conn` (called in the accept loop, so what it
/// does before its future is in accept order) and served by that future in
/// a task of its own. A failed accept (a connection reset before it was
/// taken) is skipped.
pub fn accept_each<F, Fut>(listener: TcpListener, mut conn: F) -> JoinHandle<()>
where
    F: FnMut(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(conn(stream));
        }
    })
}
