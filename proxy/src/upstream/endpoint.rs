//! One resolved address of an upstream and the load it carries.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::uri::Authority;
use http::Uri;

use super::h2_conn::H2Conn;
use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A pool key no other endpoint of this process has had: `e` and a
/// number (a reg-name, never an IP literal, so never mistaken for one).
fn next_pool_key() -> Authority {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Authority::from_maybe_shared(bytes::Bytes::from(format!("e{n}")))
        .unwrap_or_else(|_| Authority::from_static("e0"))
}

/// The round-trip time an endpoint is assumed to have before it answered once.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// How fast old round-trip times fade from the EWMA.
const DECAY: Duration = Duration::from_secs(10);

/// A resolved endpoint: its address, the requests it has in flight and a
/// peak-EWMA of its round-trip time (as linkerd's and Finagle's balancers).
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub authority: Authority,
    /// What the HTTP/1.1 pool keys this endpoint's connections by: a short
    /// name (`e7`) that the connector dials as `addr` (see
    /// `connector::EndpointList` for why not the address itself).
    pub pool_key: Authority,
    /// The address's IP as text, written once (a try's span names it).
    pub ip: Arc<str>,
    in_flight: AtomicU32,
    /// EWMA of round-trip time, in nanoseconds.
    ewma_ns: AtomicU64,
    /// When the EWMA last moved, in nanoseconds since `epoch`.
    stamp_ns: AtomicU64,
    epoch: Instant,
    /// The verdict of active health checks (true until they say otherwise).
    healthy: AtomicBool,
    /// Set by outlier detection for `eject_for`.
    ejected: AtomicBool,
    /// Failed tries in a row, for outlier detection.
    pub(super) consecutive_failures: AtomicU32,
    /// `kaname_upstream_endpoint_healthy{upstream,endpoint}`, once attached.
    gauge: OnceLock<IntGauge>,
    /// `pool.max_connections_per_endpoint`: requests in flight at once.
    connections: Arc<Semaphore>,
    /// `http://addr/`: what the connector dials for this endpoint.
    pub connect_uri: Uri,
    /// The endpoint's connection when its upstream speaks HTTP/2.
    pub h2: H2Conn,
}

impl Endpoint {
    /// An endpoint with the default cap (tests).
    #[cfg(test)]
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_connection_cap(addr, 1024)
    }

    /// An endpoint taking at most `cap` requests at once.
    pub fn with_connection_cap(addr: SocketAddr, cap: u32) -> Self {
        let authority = Authority::try_from(addr.to_string().as_str())
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1"));
        Endpoint {
            addr,
            authority: authority.clone(),
            pool_key: next_pool_key(),
            ip: addr.ip().to_string().into(),
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(DEFAULT_RTT.as_nanos() as u64),
            stamp_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            healthy: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            gauge: OnceLock::new(),
            connections: Arc::new(Semaphore::new(cap as usize)),
            connect_uri: Uri::builder()
                .scheme("http")
                .authority(authority.clone())
                .path_and_query("/")
                .build()
                .unwrap_or_else(|_| Uri::from_static("http://127.0.0.1/")),
            h2: H2Conn::default(),
        }
    }

    /// A slot for one request (an HTTP/1.1 connection in use), waiting at
    /// most `wait`; None when the endpoint stays full (limits.md:
    /// `upstream_connections`).
    pub async fn connection_slot(&self, wait: Duration) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.connections.clone().try_acquire_owned() {
            return Some(p);
        }
        tokio::time::timeout(wait, self.connections.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes traffic: passes its health checks and is not ejected.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.is_ejected()
    }

    /// The health checks' verdict alone.
    pub fn passes_checks(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Set by active health checks.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.publish();
    }

    /// Set and cleared by outlier detection.
    pub fn set_ejected(&self, ejected: bool) {
        self.ejected.store(ejected, Ordering::Relaxed);
        self.publish();
    }

    /// Attaches the endpoint's gauge and shows its state on it.
    pub fn attach_gauge(&self, gauge: IntGauge) {
        let _ = self.gauge.set(gauge);
        self.publish();
    }

    fn publish(&self) {
        if let Some(g) = self.gauge.get() {
            g.set(i64::from(self.is_healthy()));
        }
    }

    /// The load score p2c_ewma compares: expected latency times the queue.
    /// An endpoint that has not answered yet (new, or just scaled up) is
    /// tried: idle, it costs nothing, and each request in flight adds the
    /// default RTT, so it is probed without a herd. Otherwise the default
    /// RTT would starve it whenever the others answer faster than that.
    pub fn cost(&self) -> u64 {
        let in_flight = u64::from(self.in_flight());
        if self.stamp_ns.load(Ordering::Relaxed) == 0 {
            return (DEFAULT_RTT.as_nanos() as u64).saturating_mul(in_flight);
        }
        self.ewma_ns
            .load(Ordering::Relaxed)
            .saturating_mul(in_flight + 1)
    }

    /// Marks a request started; the guard ends it and records its time.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self,
            started: Instant::now(),
            ended: None,
        }
    }

    /// A request started at `started` was answered `at`: one reading of
    /// the clock for its time and for the stamp.
    fn observe(&self, started: Instant, at: Instant) {
        let rtt = at.saturating_duration_since(started);
        let now = at.saturating_duration_since(self.epoch).as_nanos() as u64;
        // Never 0: 0 means "not answered yet" (see `cost`).
        let last = self.stamp_ns.swap(now.max(1), Ordering::Relaxed);
        let rtt = rtt.as_nanos() as u64;
        let prev = self.ewma_ns.load(Ordering::Relaxed);
        let next = if rtt > prev {
            // Peak: a slow answer counts at once, so a slowing endpoint is
            // avoided before its average catches up.
            rtt
        } else {
            let elapsed = now.saturating_sub(last) as f64;
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            (prev as f64 * w + rtt as f64 * (1.0 - w)) as u64
        };
        self.ewma_ns.store(next, Ordering::Relaxed);
    }
}

/// A request in flight on an endpoint.
pub struct InFlight<'a> {
    endpoint: &'a Endpoint,
    started: Instant,
    ended: Option<Instant>,
}

impl InFlight<'_> {
    /// The request was answered now; returns how long it took. The guard's
    /// drop records the same time (one clock reading for the try's
    /// duration and the endpoint's latency, not two).
    pub fn end(&mut self) -> std::time::Duration {
        let at = Instant::now();
        self.ended = Some(at);
        at.saturating_duration_since(self.started)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        let at = self.ended.unwrap_or_else(Instant::now);
        self.endpoint.observe(self.started, at);
    }
}
