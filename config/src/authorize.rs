//! The `authorize` filter's settings (authorization.md): ordered allow and
//! deny rules, a default, and an optional external policy service.

use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Authorize {
    pub mode: AuthzMode,
    /// When no rule matches (and no external service decided).
    pub default: AuthzDecision,
    /// In order: the first rule whose conditions all hold decides.
    pub rules: Vec<AuthzRule>,
    pub external: Option<ExternalPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzMode {
    /// A deny refuses (403).
    Enforce,
    /// A deny is logged and counted; the request passes.
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzDecision {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthzRule {
    /// Given, or `rule-<n>` with n counting from 1.
    pub name: String,
    pub decision: AuthzDecision,
    pub conditions: Conditions,
}

/// Every listed condition must hold; a list inside one is any-of.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    /// Upper case.
    pub methods: Vec<String>,
    /// Lower case; `*.example.com` matches any name below it.
    pub hosts: Vec<String>,
    /// Globs on the normalized path: `*` within one segment, `**` any
    /// number of segments.
    pub paths: Vec<String>,
    /// Lower-case name, any of the values (exact).
    pub headers: Vec<(String, Vec<String>)>,
    /// mTLS identities; a trailing `*` is a prefix wildcard.
    pub identities: Vec<String>,
    /// Claim (dotted path), any of the values.
    pub claims: Vec<(String, Vec<ClaimValue>)>,
    pub authenticated: Option<bool>,
    pub source_ips: Vec<IpNet>,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        self == &Conditions::default()
    }
}

/// A claim value as written: a string, number or boolean.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimValue {
    Str(String),
    Number(f64),
    Bool(bool),
}

/// An address range: `10.0.0.0/8`, `::1/128` (a bare address is /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// `10.0.0.0/8`; None when not an address with a prefix length in range.
    pub fn parse(text: &str) -> Option<IpNet> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExternalPolicy {
    pub url: String,
    pub timeout: Duration,
    pub on_error: AuthzDecision,
    /// How long a decision is kept; zero is off.
    pub cache: Duration,
    /// Lower case.
    pub include_headers: Vec<String>,
}

/// Why a path glob is not one (`kaname check` reports it with its place).
pub fn glob_error(glob: &str) -> Option<&'static str> {
    if !glob.starts_with('/') {
        return Some("a path glob starts with /");
    }
    if glob.split('/').any(|seg| seg.contains("**") && seg != "**") {
        return Some("** must be a whole segment (/a/**/b)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_match_their_range() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.200.1.2".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.0.0.1".parse().unwrap()),
            "v4-mapped"
        );
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert_eq!(one.prefix, 32);
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(IpNet::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0/8", "x", "::1/129", "10.0.0.0/"] {
            assert_eq!(IpNet::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn globs_are_checked() {
        assert_eq!(glob_error("/api/**"), None);
        assert_eq!(glob_error("/api/*/x"), None);
        assert!(glob_error("api/*").is_some());
        assert!(glob_error("/api/**x").is_some());
    }
}
