//! `/config` and `kaname explain` for the `stores` section: the URL's
//! password hidden (its user-info, like every URL's).

use crate::redact::{duration, redact_url, Render, Src, M, Y};
use crate::store::{Redis, Store};

impl Render {
    pub(crate) fn store(&self, s: &Store, src: Src) -> Y {
        let Store { name: _, redis } = s;
        let Redis {
            url,
            tls: _,
            host: _,
            port: _,
            db: _,
            timeout,
            key_prefix,
            ca_file,
        } = redis;
        let rs = src.key("redis");
        M::default()
            .put(
                "redis",
                M::default()
                    .put("url", self.s(&redact_url(url), rs.key("url")))
                    .put("timeout", self.p(duration(*timeout), rs.key("timeout")))
                    .put("key_prefix", self.s(key_prefix, rs.key("key_prefix")))
                    .opt(
                        "ca_file",
                        ca_file.as_ref().map(|f| self.s(f, rs.key("ca_file"))),
                    )
                    .done(),
            )
            .done()
    }
}
