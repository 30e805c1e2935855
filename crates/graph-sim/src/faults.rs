//! Fault injection: rules queued through `POST /admin/faults` that make the next
//! matching requests fail the ways Graph and Entra fail (graph-api.md §1.6, §2.2).

use serde::{Deserialize, Serialize};

/// Which requests a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultMatch {
    #[serde(rename = "groups/delta")]
    GroupsDelta,
    #[serde(rename = "users/delta")]
    UsersDelta,
    #[serde(rename = "token")]
    Token,
    #[serde(rename = "any")]
    Any,
}

/// Shapes of a `syncStateNotFound`/`resyncRequired` error body, since clients must
/// find the code wherever Graph puts it (graph-api.md §1.6, §2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorVariant {
    /// `error.code` is the code.
    #[default]
    Top,
    /// `error.code` is `badRequest`; the code sits in `innerError.innerError`.
    Nested,
    /// Like `Nested` with lowercase `innererror` keys.
    NestedLowercase,
    /// `error.code` in PascalCase (`SyncStateNotFound`), as Outlook delta sends it.
    PascalCase,
}

fn default_throttle_retry_after() -> Option<String> {
    Some("2.128".into())
}

fn default_sync_status() -> u16 {
    400
}

/// What a rule does to a matching request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum FaultKind {
    /// 429 with `Retry-After` (default `2.128`; `null` sends none) and the
    /// `x-ms-throttle-scope`/`x-ms-throttle-information` headers.
    #[serde(rename_all = "camelCase")]
    Throttle {
        #[serde(default = "default_throttle_retry_after")]
        retry_after: Option<String>,
    },
    /// 503, with `Retry-After` when given.
    #[serde(rename_all = "camelCase")]
    Unavailable {
        #[serde(default)]
        retry_after: Option<String>,
    },
    /// 504.
    GatewayTimeout,
    /// 410 Gone with `Location` = the round's initial URL with an empty `$deltatoken=`.
    Reset,
    /// 4xx (default 400) with code `syncStateNotFound`.
    SyncStateNotFound {
        #[serde(default)]
        variant: ErrorVariant,
        #[serde(default = "default_sync_status")]
        status: u16,
    },
    /// 4xx (default 400) with code `resyncRequired`.
    ResyncRequired {
        #[serde(default)]
        variant: ErrorVariant,
        #[serde(default = "default_sync_status")]
        status: u16,
    },
    /// 200 with a truncated JSON body.
    Malformed,
    /// Waits, then serves the request normally.
    Delay { ms: u64 },
    /// 401 as for an expired or revoked token.
    Unauthorized,
    /// Serves the page normally but lists every object twice (Graph allows duplicates).
    Duplicate,
    /// 200 with an empty page whose `@odata.nextLink` is the request's own URL: the
    /// never-ending chain reported in docs issue #4263 (graph-api.md §1.4).
    NextLinkLoop,
}

impl FaultKind {
    /// Delta-token faults make no sense on the token endpoint, so `any` skips them there.
    fn applies_to(&self, endpoint: Endpoint) -> bool {
        match self {
            FaultKind::Reset
            | FaultKind::SyncStateNotFound { .. }
            | FaultKind::ResyncRequired { .. }
            | FaultKind::Duplicate
            | FaultKind::NextLinkLoop => endpoint != Endpoint::Token,
            _ => true,
        }
    }
}

fn one() -> u32 {
    1
}

/// One queued fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    #[serde(rename = "match")]
    pub matches: FaultMatch,
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many of the next matching requests it applies to (default 1).
    #[serde(default = "one")]
    pub count: u32,
}

impl FaultRule {
    pub fn new(matches: FaultMatch, kind: FaultKind, count: u32) -> Self {
        FaultRule { matches, kind, count }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    GroupsDelta,
    UsersDelta,
    Token,
}

/// Rules in the order they were added; the first one that matches is used.
#[derive(Default)]
pub struct FaultQueue {
    rules: Vec<FaultRule>,
    injected: u64,
}

impl FaultQueue {
    pub fn add(&mut self, rules: Vec<FaultRule>) -> Result<(), String> {
        for r in &rules {
            match &r.kind {
                FaultKind::SyncStateNotFound { status, .. } | FaultKind::ResyncRequired { status, .. }
                    if !(400..500).contains(status) =>
                {
                    return Err(format!("status {status} is not a 4xx status"));
                }
                FaultKind::Delay { ms } if *ms > 600_000 => {
                    return Err("delay ms must be at most 600000".into());
                }
                _ => {}
            }
        }
        self.rules.extend(rules.into_iter().filter(|r| r.count > 0));
        Ok(())
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }

    pub fn injected(&self) -> u64 {
        self.injected
    }

    /// Consumes one use of the first rule matching `endpoint`.
    pub fn take(&mut self, endpoint: Endpoint) -> Option<FaultKind> {
        let pos = self.rules.iter().position(|r| {
            let hit = match r.matches {
                FaultMatch::Any => true,
                FaultMatch::GroupsDelta => endpoint == Endpoint::GroupsDelta,
                FaultMatch::UsersDelta => endpoint == Endpoint::UsersDelta,
                FaultMatch::Token => endpoint == Endpoint::Token,
            };
            hit && r.kind.applies_to(endpoint)
        })?;
        let rule = &mut self.rules[pos];
        let kind = rule.kind.clone();
        rule.count -= 1;
        if rule.count == 0 {
            self.rules.remove(pos);
        }
        self.injected += 1;
        Some(kind)
    }
}

/// The error code as the chosen variant spells it, and where it goes.
pub fn sync_error_body(
    code: &str,
    message: &str,
    variant: ErrorVariant,
    ids: &crate::errors::RequestIds,
) -> serde_json::Value {
    use crate::errors::graph_error_body;
    use serde_json::json;
    match variant {
        ErrorVariant::Top => graph_error_body(code, message, ids, None),
        ErrorVariant::PascalCase => {
            let mut pascal = code.to_owned();
            if let Some(first) = pascal.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            graph_error_body(&pascal, message, ids, None)
        }
        ErrorVariant::Nested => graph_error_body(
            "badRequest",
            message,
            ids,
            Some(json!({ "code": "invalidRequest", "innerError": { "code": code } })),
        ),
        ErrorVariant::NestedLowercase => {
            let mut body = graph_error_body(
                "badRequest",
                message,
                ids,
                Some(json!({ "code": "invalidRequest", "innererror": { "code": code } })),
            );
            // The outer level uses the lowercase key too.
            if let Some(err) = body.get_mut("error").and_then(|e| e.as_object_mut())
                && let Some(inner) = err.remove("innerError")
            {
                err.insert("innererror".into(), inner);
            }
            body
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_rules() {
        let rules: Vec<FaultRule> = serde_json::from_value(json!([
            {"match": "groups/delta", "kind": "throttle", "count": 2},
            {"match": "any", "kind": "unavailable", "retryAfter": "5"},
            {"match": "token", "kind": "throttle", "retryAfter": null},
            {"match": "users/delta", "kind": "delay", "ms": 10},
            {"match": "any", "kind": "resyncRequired", "variant": "nestedLowercase"},
        ]))
        .unwrap();
        assert_eq!(rules[0].kind, FaultKind::Throttle { retry_after: Some("2.128".into()) });
        assert_eq!(rules[0].count, 2);
        assert_eq!(rules[1].count, 1);
        assert_eq!(rules[2].kind, FaultKind::Throttle { retry_after: None });
        assert_eq!(rules[3].kind, FaultKind::Delay { ms: 10 });
        assert_eq!(rules[4].kind, FaultKind::ResyncRequired { variant: ErrorVariant::NestedLowercase, status: 400 });
        let back = serde_json::to_value(&rules[0]).unwrap();
        assert_eq!(back["match"], "groups/delta");
        assert_eq!(back["kind"], "throttle");
    }

    #[test]
    fn take_consumes_in_order() {
        let mut q = FaultQueue::default();
        q.add(vec![
            FaultRule::new(FaultMatch::Any, FaultKind::Reset, 1),
            FaultRule::new(FaultMatch::Token, FaultKind::GatewayTimeout, 2),
        ])
        .unwrap();
        // Reset does not apply to the token endpoint, so the token rule is used.
        assert_eq!(q.take(Endpoint::Token), Some(FaultKind::GatewayTimeout));
        assert_eq!(q.take(Endpoint::UsersDelta), Some(FaultKind::Reset));
        assert_eq!(q.take(Endpoint::UsersDelta), None);
        assert_eq!(q.take(Endpoint::Token), Some(FaultKind::GatewayTimeout));
        assert_eq!(q.take(Endpoint::Token), None);
        assert_eq!(q.injected(), 3);
    }
}
