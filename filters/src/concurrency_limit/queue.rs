//! The limiter: a count of requests inside, and a small priority queue of
//! requests waiting for a slot.
//!
//! The lock is a std `Mutex` held for a few pointer moves, never across an
//! await. A waiter holds the receiving end of a oneshot channel; a leaving
//! request hands its slot straight to the next waiter (high, then normal,
//! then low; first come first served within a priority), so `in_flight`
//! never dips and a newcomer cannot jump the queue. A waiter displaced by a
//! higher-priority arrival sees its sender dropped.
//!
//! Invariant: a request waits only while `in_flight == max_in_flight`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::HeaderValue;
use kaname_config::types::PriorityClass;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::oneshot;

use crate::claims::VerifiedClaims;

/// A request's class in the queue: from the route's own priority, or the
/// filter's source (a header or a verified claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    High = 0,
    Normal = 1,
    Low = 2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// `high`, `normal` or `low` in any case; anything else (or no header)
    /// is normal, so a client cannot break the filter with a typo.
    pub fn from_header(value: Option<&HeaderValue>) -> Priority {
        value.map_or(Priority::Normal, |v| Priority::from_text(v.as_bytes()))
    }

    /// The claim `name` of a verified token: a string `high`, `normal` or
    /// `low` in any case. No token, no such claim, a claim that is not a
    /// string (`1`, `true`, a list) or another word: normal.
    pub fn from_claim(claims: Option<&VerifiedClaims>, name: &str) -> Priority {
        claims
            .and_then(|c| c.0.get(name))
            .and_then(serde_json::Value::as_str)
            .map_or(Priority::Normal, |s| Priority::from_text(s.as_bytes()))
    }

    fn from_text(v: &[u8]) -> Priority {
        if v.eq_ignore_ascii_case(b"high") {
            Priority::High
        } else if v.eq_ignore_ascii_case(b"low") {
            Priority::Low
        } else {
            Priority::Normal
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<PriorityClass> for Priority {
    fn from(p: PriorityClass) -> Priority {
        match p {
            PriorityClass::High => Priority::High,
            PriorityClass::Normal => Priority::Normal,
            PriorityClass::Low => Priority::Low,
        }
    }
}

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    #[error("queue full")]
    QueueFull,
    #[error("displaced from the queue by a higher-priority request")]
    Displaced,
    #[error("waited longer than queue_timeout")]
    Timeout,
}

/// The metric handles of one filter, resolved at build time.
pub struct Gauges {
    pub in_flight: IntGauge,
    pub queue_depth: IntGauge,
    /// By priority: high, normal, low.
    pub shed: [IntCounter; 3],
}

/// One concurrency_limit filter's slots and queue.
pub struct Limiter {
    max_in_flight: usize,
    max_queue: usize,
    queue_timeout: Duration,
    state: Mutex<State>,
    gauges: Gauges,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    /// By priority: high, normal, low.
    queues: [VecDeque<Waiter>; 3],
    next_id: u64,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

/// A slot inside; given back when dropped.
pub struct Permit {
    limiter: Arc<Limiter>,
}

/// A request in the queue. Dropped before its grant is used (the client
/// left, the route timed out), it takes itself out of the queue or gives
/// back the slot it was just handed.
struct Waiting<'a> {
    limiter: &'a Arc<Limiter>,
    id: u64,
    priority: Priority,
    rx: oneshot::Receiver<()>,
    settled: bool,
}

// === impl Limiter ===

impl Limiter {
    pub fn new(
        max_in_flight: usize,
        max_queue: usize,
        queue_timeout: Duration,
        gauges: Gauges,
    ) -> Self {
        Limiter {
            max_in_flight: max_in_flight.max(1),
            max_queue,
            queue_timeout,
            state: Mutex::new(State::default()),
            gauges,
        }
    }

    /// A poisoned lock only means a panic elsewhere mid-update of plain
    /// counters; keep serving rather than fail every request.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn show(&self, st: &State) {
        self.gauges.in_flight.set(st.in_flight as i64);
        self.gauges.queue_depth.set(st.queued() as i64);
    }

    fn shed(&self, priority: Priority, why: Shed) -> Shed {
        self.gauges.shed[priority.index()].inc();
        why
    }

    /// A slot now, a slot after waiting in the queue, or shed.
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Result<Permit, Shed> {
        let mut waiting = {
            let mut st = self.lock();
            if st.in_flight < self.max_in_flight {
                st.in_flight += 1;
                self.show(&st);
                return Ok(Permit {
                    limiter: self.clone(),
                });
            }
            if st.queued() >= self.max_queue {
                // Full: the newest waiter of the lowest priority below ours
                // gives up its place (its sender is dropped: it sheds itself).
                let victim = (priority.index() + 1..3)
                    .rev()
                    .find_map(|p| st.queues[p].pop_back());
                if victim.is_none() {
                    drop(st);
                    return Err(self.shed(priority, Shed::QueueFull));
                }
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_id;
            st.next_id += 1;
            st.queues[priority.index()].push_back(Waiter { id, grant: tx });
            self.show(&st);
            Waiting {
                limiter: self,
                id,
                priority,
                rx,
                settled: false,
            }
        };
        let outcome = match tokio::time::timeout(self.queue_timeout, &mut waiting.rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Shed::Displaced),
            Err(_) if waiting.leave() => Err(Shed::Timeout),
            // Granted or displaced just as the timeout fired.
            Err(_) => match waiting.rx.try_recv() {
                Ok(()) => Ok(()),
                Err(_) => Err(Shed::Displaced),
            },
        };
        waiting.settled = true;
        match outcome {
            Ok(()) => Ok(Permit {
                limiter: self.clone(),
            }),
            Err(why) => Err(self.shed(priority, why)),
        }
    }

    /// Hands the slot to the next waiter, or frees it.
    fn release(&self) {
        let mut st = self.lock();
        for queue in &mut st.queues {
            while let Some(w) = queue.pop_front() {
                // Fails only if the waiter is gone; then try the next one.
                if w.grant.send(()).is_ok() {
                    self.show(&st);
                    return;
                }
            }
        }
        st.in_flight = st.in_flight.saturating_sub(1);
        self.show(&st);
    }

    /// Requests inside now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.lock().queued()
    }
}

impl State {
    fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }
}

// === impl Permit ===

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.release();
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

// === impl Waiting ===

impl Waiting<'_> {
    /// Takes this waiter out of the queue; false when it was no longer
    /// there (granted or displaced already).
    fn leave(&self) -> bool {
        let mut st = self.limiter.lock();
        let queue = &mut st.queues[self.priority.index()];
        let Some(at) = queue.iter().position(|w| w.id == self.id) else {
            return false;
        };
        queue.remove(at);
        self.limiter.show(&st);
        true
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.settled || self.leave() {
            return;
        }
        // Handed a slot nobody will use: pass it on.
        if self.rx.try_recv().is_ok() {
            self.limiter.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn limiter(max_in_flight: usize, max_queue: usize, m: &Metrics) -> Arc<Limiter> {
        let gauges = Gauges {
            in_flight: m.concurrency_in_flight.with_label_values(&["c"]),
            queue_depth: m.queue_depth.with_label_values(&["c"]),
            shed: Priority::ALL.map(|p| m.shed_total.with_label_values(&["c", p.as_str()])),
        };
        Arc::new(Limiter::new(
            max_in_flight,
            max_queue,
            Duration::from_millis(100),
            gauges,
        ))
    }

    fn shed(m: &Metrics, p: &str) -> u64 {
        m.shed_total.with_label_values(&["c", p]).get()
    }

    /// Spawns a waiter and lets it reach the queue.
    async fn enqueue(
        l: &Arc<Limiter>,
        p: Priority,
    ) -> tokio::task::JoinHandle<Result<Permit, Shed>> {
        let l2 = l.clone();
        let before = l.queued();
        let task = tokio::spawn(async move { l2.acquire(p).await });
        while l.queued() == before {
            tokio::task::yield_now().await;
        }
        task
    }

    #[test]
    fn priority_from_header() {
        let p = |s: &str| Priority::from_header(Some(&HeaderValue::from_str(s).expect("value")));
        assert_eq!(p("high"), Priority::High);
        assert_eq!(p("HIGH"), Priority::High);
        assert_eq!(p("low"), Priority::Low);
        assert_eq!(p("normal"), Priority::Normal);
        assert_eq!(p("urgent"), Priority::Normal);
        assert_eq!(Priority::from_header(None), Priority::Normal);
    }

    #[test]
    fn priority_from_a_claim() {
        let json = serde_json::json!({
            "high": "high", "upper": "LOW", "normal": "normal", "other": "urgent",
            "number": 1, "boolean": true, "list": ["high"], "object": {"tier": "high"}, "null": null,
        });
        let serde_json::Value::Object(map) = json else {
            unreachable!()
        };
        let claims = VerifiedClaims(Arc::new(map));
        let p = |name: &str| Priority::from_claim(Some(&claims), name);
        assert_eq!(p("high"), Priority::High);
        assert_eq!(p("upper"), Priority::Low);
        assert_eq!(p("normal"), Priority::Normal);
        assert_eq!(p("other"), Priority::Normal, "an unknown word");
        assert_eq!(p("missing"), Priority::Normal, "no such claim");
        for not_a_string in ["number", "boolean", "list", "object", "null"] {
            assert_eq!(p(not_a_string), Priority::Normal, "{not_a_string}");
        }
        assert_eq!(
            Priority::from_claim(None, "high"),
            Priority::Normal,
            "no token"
        );
    }

    #[test]
    fn priority_from_a_route() {
        assert_eq!(Priority::from(PriorityClass::High), Priority::High);
        assert_eq!(Priority::from(PriorityClass::Normal), Priority::Normal);
        assert_eq!(Priority::from(PriorityClass::Low), Priority::Low);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_then_queue_then_shed() {
        let m = Metrics::new();
        let l = limiter(2, 1, &m);
        let a = l.acquire(Priority::Normal).await.expect("slot 1");
        let _b = l.acquire(Priority::Normal).await.expect("slot 2");
        assert_eq!(m.concurrency_in_flight.with_label_values(&["c"]).get(), 2);
        let waiter = enqueue(&l, Priority::Normal).await;
        assert_eq!(m.queue_depth.with_label_values(&["c"]).get(), 1);
        assert_eq!(
            l.acquire(Priority::Normal).await.unwrap_err(),
            Shed::QueueFull
        );
        assert_eq!(shed(&m, "normal"), 1);
        drop(a);
        let c = waiter.await.expect("join").expect("handed a slot");
        assert_eq!(l.in_flight(), 2, "the slot was handed over, not freed");
        assert_eq!(l.queued(), 0);
        drop(c);
        assert_eq!(l.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_past_queue_timeout_sheds() {
        let m = Metrics::new();
        let l = limiter(1, 4, &m);
        let _a = l.acquire(Priority::Normal).await.expect("slot");
        let start = tokio::time::Instant::now();
        let res = l.acquire(Priority::Low).await;
        assert_eq!(res.unwrap_err(), Shed::Timeout);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(l.queued(), 0);
        assert_eq!(shed(&m, "low"), 1);
        assert_eq!(m.queue_depth.with_label_values(&["c"]).get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn serves_high_before_normal_before_low() {
        let m = Metrics::new();
        let l = limiter(1, 10, &m);
        let first = l.acquire(Priority::Normal).await.expect("slot");
        let low = enqueue(&l, Priority::Low).await;
        let normal = enqueue(&l, Priority::Normal).await;
        let high = enqueue(&l, Priority::High).await;
        drop(first);
        let h = high.await.expect("join").expect("high first");
        assert_eq!(l.queued(), 2);
        drop(h);
        let n = normal.await.expect("join").expect("normal second");
        assert_eq!(l.queued(), 1);
        drop(n);
        let lo = low.await.expect("join").expect("low last");
        drop(lo);
        assert_eq!(l.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_sheds_the_newest_lowest_waiter_for_a_higher_arrival() {
        let m = Metrics::new();
        let l = limiter(1, 3, &m);
        let first = l.acquire(Priority::Normal).await.expect("slot");
        let low_old = enqueue(&l, Priority::Low).await;
        let normal = enqueue(&l, Priority::Normal).await;
        let low_new = enqueue(&l, Priority::Low).await;
        // Full. A low arrival has no one lower to displace: shed itself.
        assert_eq!(l.acquire(Priority::Low).await.unwrap_err(), Shed::QueueFull);
        // A high arrival displaces the newest low waiter.
        let high = enqueue_full(&l, Priority::High);
        assert_eq!(low_new.await.expect("join").unwrap_err(), Shed::Displaced);
        assert_eq!(shed(&m, "low"), 2);
        drop(first);
        let h = high.await.expect("join").expect("high");
        drop(h);
        drop(normal.await.expect("join").expect("normal"));
        drop(
            low_old
                .await
                .expect("join")
                .expect("old low kept its place"),
        );
        assert_eq!(l.in_flight(), 0);
        assert_eq!(shed(&m, "high") + shed(&m, "normal"), 0);
    }

    /// As `enqueue`, for a full queue (its length does not change).
    fn enqueue_full(
        l: &Arc<Limiter>,
        p: Priority,
    ) -> tokio::task::JoinHandle<Result<Permit, Shed>> {
        let l2 = l.clone();
        tokio::spawn(async move { l2.acquire(p).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_dropped_leaves_the_queue() {
        let m = Metrics::new();
        let l = limiter(1, 2, &m);
        let first = l.acquire(Priority::Normal).await.expect("slot");
        let gone = enqueue(&l, Priority::Normal).await;
        gone.abort();
        let _ = gone.await;
        assert_eq!(l.queued(), 0);
        drop(first);
        assert_eq!(l.in_flight(), 0, "no slot handed to the departed waiter");
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_nobody_takes_is_passed_on() {
        let m = Metrics::new();
        let l = limiter(1, 2, &m);
        let first = l.acquire(Priority::Normal).await.expect("slot");
        let mut waiting = Box::pin(l.acquire(Priority::Normal));
        // Poll it a moment: it is queued.
        let polled = tokio::time::timeout(Duration::from_millis(1), waiting.as_mut()).await;
        assert!(polled.is_err());
        assert_eq!(l.queued(), 1);
        let next = enqueue(&l, Priority::Normal).await;
        drop(first); // granted to `waiting`, which is then dropped unpolled
        drop(waiting);
        let n = next.await.expect("join").expect("slot passed on");
        assert_eq!(l.in_flight(), 1);
        drop(n);
        assert_eq!(l.in_flight(), 0);
    }
}
