use std::time::{Duration, Instant};

use graph_sim::{ErrorVariant, FaultKind, FaultMatch, FaultRule};
use serde_json::Value;

use crate::common::{GRAPH_SCOPE, error_code, form, sim};

fn rule(matches: FaultMatch, kind: FaultKind, count: u32) -> FaultRule {
    FaultRule::new(matches, kind, count)
}

#[tokio::test]
async fn throttle_with_retry_after_and_headers() {
    let s = sim().await;
    let url = s.url("/v1.0/groups/delta");
    s.admin
        .add_faults(&[rule(FaultMatch::GroupsDelta, FaultKind::Throttle { retry_after: Some("2.128".into()) }, 2)])
        .await
        .unwrap();
    // users/delta is not matched.
    assert_eq!(s.get(&s.url("/v1.0/users/delta")).await.status(), 200);
    for _ in 0..2 {
        let resp = s.get(&url).await;
        assert_eq!(resp.status(), 429);
        let h = resp.headers();
        assert_eq!(h["retry-after"], "2.128");
        assert!(h["x-ms-throttle-scope"].to_str().unwrap().starts_with("Tenant_Application/ReadWrite/"));
        assert_eq!(h["x-ms-throttle-information"], "ResourceUnitLimitExceeded");
        assert_eq!(error_code(resp).await.1, "TooManyRequests");
    }
    assert_eq!(s.get(&url).await.status(), 200, "the rule is used up");
    assert!(s.admin.faults().await.unwrap().is_empty());

    s.admin.add_faults(&[rule(FaultMatch::Any, FaultKind::Throttle { retry_after: None }, 1)]).await.unwrap();
    let resp = s.get(&url).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn unavailable_and_gateway_timeout() {
    let s = sim().await;
    let url = s.url("/v1.0/users/delta");
    s.admin
        .add_faults(&[
            rule(FaultMatch::UsersDelta, FaultKind::Unavailable { retry_after: Some("3".into()) }, 1),
            rule(FaultMatch::UsersDelta, FaultKind::Unavailable { retry_after: None }, 1),
            rule(FaultMatch::UsersDelta, FaultKind::GatewayTimeout, 1),
        ])
        .await
        .unwrap();
    let r1 = s.get(&url).await;
    assert_eq!((r1.status().as_u16(), r1.headers()["retry-after"].to_str().unwrap()), (503, "3"));
    let r2 = s.get(&url).await;
    assert_eq!(r2.status(), 503);
    assert!(r2.headers().get("retry-after").is_none());
    assert_eq!(s.get(&url).await.status(), 504);
    assert_eq!(s.get(&url).await.status(), 200);
    assert_eq!(s.admin.stats().await.unwrap().faults_injected, 3);
}

#[tokio::test]
async fn reset_answers_410_with_an_initial_location() {
    let s = sim().await;
    s.group("g", false, &[]).await;
    let first = s.round(&s.url("/v1.0/groups/delta?$select=displayName,members")).await;
    s.admin.add_faults(&[rule(FaultMatch::GroupsDelta, FaultKind::Reset, 1)]).await.unwrap();
    let resp = s.get(&first.delta_link).await;
    assert_eq!(resp.status(), 410);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&s.url("/v1.0/groups/delta?")), "{location}");
    assert!(location.contains("$select=displayName%2Cmembers"), "{location}");
    assert!(location.ends_with("$deltatoken="), "{location}");
    let restarted = s.round(&location).await;
    assert_eq!(restarted.objects().len(), 1, "the Location URL starts a full sync");
}

#[tokio::test]
async fn sync_state_errors_in_every_shape() {
    let s = sim().await;
    let url = s.url("/v1.0/groups/delta");
    let cases = [
        (
            FaultKind::SyncStateNotFound { variant: ErrorVariant::Top, status: 400 },
            400,
            "/error/code",
            "syncStateNotFound",
        ),
        (
            FaultKind::SyncStateNotFound { variant: ErrorVariant::PascalCase, status: 404 },
            404,
            "/error/code",
            "SyncStateNotFound",
        ),
        (
            FaultKind::ResyncRequired { variant: ErrorVariant::Nested, status: 400 },
            400,
            "/error/innerError/innerError/code",
            "resyncRequired",
        ),
        (
            FaultKind::ResyncRequired { variant: ErrorVariant::NestedLowercase, status: 400 },
            400,
            "/error/innererror/innererror/code",
            "resyncRequired",
        ),
    ];
    for (kind, status, pointer, code) in cases {
        s.admin.add_faults(&[rule(FaultMatch::Any, kind, 1)]).await.unwrap();
        let resp = s.get(&url).await;
        assert_eq!(resp.status().as_u16(), status);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body.pointer(pointer).and_then(Value::as_str), Some(code), "{body}");
    }
}

#[tokio::test]
async fn malformed_delay_unauthorized_duplicate() {
    let s = sim().await;
    s.group("g", false, &[]).await;
    let url = s.url("/v1.0/groups/delta");
    s.admin
        .add_faults(&[
            rule(FaultMatch::GroupsDelta, FaultKind::Malformed, 1),
            rule(FaultMatch::GroupsDelta, FaultKind::Delay { ms: 300 }, 1),
            rule(FaultMatch::GroupsDelta, FaultKind::Unauthorized, 1),
            rule(FaultMatch::GroupsDelta, FaultKind::Duplicate, 1),
        ])
        .await
        .unwrap();
    let resp = s.get(&url).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "malformed body: {text}");

    let started = Instant::now();
    assert_eq!(s.get(&url).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let (status, code, _) = error_code(s.get(&url).await).await;
    assert_eq!((status, code.as_str()), (401, "InvalidAuthenticationToken"));

    let page: Value = s.get(&url).await.json().await.unwrap();
    let value = page["value"].as_array().unwrap();
    assert_eq!(value.len(), 2);
    assert_eq!(value[0], value[1]);
}

#[tokio::test]
async fn token_endpoint_faults() {
    let s = sim().await;
    s.admin
        .add_faults(&[
            rule(FaultMatch::Token, FaultKind::Throttle { retry_after: Some("1".into()) }, 1),
            rule(FaultMatch::Any, FaultKind::Reset, 1),
            rule(FaultMatch::Token, FaultKind::Unauthorized, 1),
        ])
        .await
        .unwrap();
    let body = || {
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &s.config.client_id),
            ("client_secret", &s.config.client_secret),
            ("scope", GRAPH_SCOPE),
        ])
    };
    let resp = s.post_token(body()).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    // The reset rule does not apply to the token endpoint; the next token rule does.
    let resp = s.post_token(body()).await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client");
    assert_eq!(s.post_token(body()).await.status(), 200);
    assert_eq!(s.admin.faults().await.unwrap().len(), 1, "the reset rule is still queued");
    s.admin.clear_faults().await.unwrap();
    assert!(s.admin.faults().await.unwrap().is_empty());
}

#[tokio::test]
async fn next_link_loop_points_the_page_at_itself() {
    let s = sim().await;
    let url = s.url("/v1.0/groups/delta?$select=displayName");
    s.admin.add_faults(&[rule(FaultMatch::GroupsDelta, FaultKind::NextLinkLoop, 2)]).await.unwrap();
    let page: Value = s.get(&url).await.json().await.unwrap();
    assert_eq!(page["@odata.nextLink"].as_str(), Some(url.as_str()));
    assert_eq!(page["value"].as_array().map(Vec::len), Some(0));
    assert!(page.get("@odata.deltaLink").is_none());
}
