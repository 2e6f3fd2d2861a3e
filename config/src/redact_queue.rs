//! `/config` and `kaname explain` for the `queues` section: every setting
//! in config words, the callback secret hidden.

use crate::queue::{Callback, Delivery, Queue, QueueStore};
use crate::redact::{duration, size, Render, Src, M, Y};

impl Render {
    pub(crate) fn queue(&self, q: &Queue, src: Src) -> Y {
        let Queue {
            name: _,
            store,
            max_depth,
            max_body_bytes,
            priority,
            delivery,
            keep_finished,
            max_result_bytes,
            callback,
            visibility_timeout,
        } = q;
        let store_name = match store {
            QueueStore::Local => "local",
            QueueStore::Shared(s) => s.as_str(),
        };
        M::default()
            .put("store", self.s(store_name, src.key("store")))
            .put(
                "max_depth",
                self.p(max_depth.to_string(), src.key("max_depth")),
            )
            .put(
                "max_body_bytes",
                self.p(size(*max_body_bytes), src.key("max_body_bytes")),
            )
            .opt(
                "priority",
                priority
                    .as_ref()
                    .map(|p| self.priority_source(p, src.key("priority"))),
            )
            .put("delivery", self.delivery(delivery, src.key("delivery")))
            .put(
                "keep_finished",
                self.p(duration(*keep_finished), src.key("keep_finished")),
            )
            .put(
                "max_result_bytes",
                self.p(size(*max_result_bytes), src.key("max_result_bytes")),
            )
            .opt(
                "callback",
                callback
                    .as_ref()
                    .map(|c| self.callback(c, src.key("callback"))),
            )
            .opt(
                "visibility_timeout",
                matches!(store, QueueStore::Shared(_))
                    .then(|| self.p(duration(*visibility_timeout), src.key("visibility_timeout"))),
            )
            .done()
    }

    fn delivery(&self, d: &Delivery, src: Src) -> Y {
        let Delivery {
            concurrency,
            attempts,
            per_try_timeout,
            backoff_base,
            backoff_max,
            retry_on,
        } = d;
        let bs = src.key("backoff");
        M::default()
            .put(
                "concurrency",
                self.p(concurrency.to_string(), src.key("concurrency")),
            )
            .put(
                "attempts",
                self.p(attempts.to_string(), src.key("attempts")),
            )
            .put(
                "per_try_timeout",
                self.p(duration(*per_try_timeout), src.key("per_try_timeout")),
            )
            .put(
                "backoff",
                M::default()
                    .put("base", self.p(duration(*backoff_base), bs.key("base")))
                    .put("max", self.p(duration(*backoff_max), bs.key("max")))
                    .done(),
            )
            .put("retry_on", self.conditions(retry_on, src.key("retry_on")))
            .done()
    }

    fn callback(&self, c: &Callback, src: Src) -> Y {
        let Callback {
            header,
            allowed_hosts,
            secret: _,
            attempts,
        } = c;
        M::default()
            .put("header", self.s(header, src.key("header")))
            .put(
                "allowed_hosts",
                self.strs(allowed_hosts, src.key("allowed_hosts")),
            )
            .put("secret", Y::Redacted)
            .put(
                "attempts",
                self.p(attempts.to_string(), src.key("attempts")),
            )
            .done()
    }
}
