//! The `authorize` filter: ordered rules, an external policy service, a default.

use std::collections::BTreeMap;

use schemars::JsonSchema;

use super::values::{
    choice, scalar, Bool, Duration, HeaderName, List1, Method, NonEmpty, OneOrMore, Text, Url,
};
use crate::parse::authorize::{DECISIONS, MODES};

/// The `authorize` filter: the first rule whose conditions all hold
/// decides; when none does, `external` decides if set, else `default`.
#[derive(JsonSchema)]
#[schemars(
    deny_unknown_fields,
    extend("anyOf" = [{"required": ["rules"]}, {"required": ["external"]}])
)]
pub struct Authorize {
    /// `enforce`, or `audit`: a deny is logged and counted, the request
    /// passes. Default `enforce`.
    mode: Option<AuthzMode>,
    /// The decision when no rule matched and there is no `external`.
    /// Default `deny`.
    default: Option<Decision>,
    /// The rules, in order.
    rules: Option<Vec<Rule>>,
    /// A policy service asked when no rule matched (OPA's data API).
    external: Option<External>,
}

scalar! {
    /// Whether a deny is enforced or only logged.
    AuthzMode = choice(MODES);
}

scalar! {
    /// `allow` or `deny`.
    Decision = choice(DECISIONS);
}

/// A rule: one of `allow` or `deny`, with its conditions.
#[derive(JsonSchema)]
#[schemars(
    deny_unknown_fields,
    extend("oneOf" = [{"required": ["allow"]}, {"required": ["deny"]}])
)]
pub struct Rule {
    /// The rule's name in logs and metrics. Default `rule-N`.
    name: Option<NonEmpty>,
    /// Allow when all conditions hold.
    allow: Option<Conditions>,
    /// Deny when all conditions hold.
    deny: Option<Conditions>,
}

/// Conditions, all of which must hold (a list inside one is any-of); at
/// least one.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, extend("minProperties" = 1))]
pub struct Conditions {
    /// The method is one of these.
    methods: Option<List1<Method>>,
    /// The request authority (port ignored) is one of these;
    /// `*.example.com` matches any name below example.com.
    hosts: Option<OneOrMore<Text>>,
    /// The normalized path matches one of these globs (`*` within a
    /// segment, `**` as a whole segment).
    paths: Option<Vec<NonEmpty>>,
    /// `{ name: value | [values] }`: the header has one of the values.
    headers: Option<BTreeMap<String, OneOrMore<Text>>>,
    /// The verified client certificate names one of these (URI or DNS
    /// SAN); a trailing `*` is a prefix wildcard.
    identities: Option<OneOrMore<Text>>,
    /// `{ claim: value | [values] }`: the claim (a dotted path) equals a
    /// value, or holds it. Needs a jwt filter before this one.
    claims: Option<BTreeMap<String, OneOrMore<Text>>>,
    /// `true`: a jwt filter before this one verified a token; `false`: none
    /// did.
    authenticated: Option<Bool>,
    /// The peer address is in one of these CIDRs (`10.0.0.0/8`, `fd00::/8`).
    source_ips: Option<Vec<Text>>,
}

/// A policy service: `POST {"input": {...}}`, answered `{"result": true}`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct External {
    /// The service's URL.
    url: Url,
    /// How long a call may take. Default `100ms`.
    timeout: Option<Duration>,
    /// The decision on a timeout, an error status or bad JSON. Default
    /// `deny`.
    on_error: Option<Decision>,
    /// How long decisions are kept. Default `0s` (off).
    cache: Option<Duration>,
    /// Request headers sent to the service.
    include_headers: Option<Vec<HeaderName>>,
}
