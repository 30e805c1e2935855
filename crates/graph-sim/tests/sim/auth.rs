use base64::Engine;
use reqwest::header::AUTHORIZATION;
use serde_json::Value;

use crate::common::{GRAPH_SCOPE, error_code, form, sim};

async fn aad_error(resp: reqwest::Response) -> (u16, String, u64, Value) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    for key in ["error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id"] {
        assert!(v.get(key).is_some(), "AAD error lacks {key}: {v}");
    }
    let code = v["error_codes"][0].as_u64().unwrap();
    assert!(v["error_description"].as_str().unwrap().starts_with(&format!("AADSTS{code}:")));
    (status, v["error"].as_str().unwrap().to_owned(), code, v)
}

#[tokio::test]
async fn token_success_shape() {
    let s = sim().await;
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", &s.config.client_id),
        ("client_secret", &s.config.client_secret),
        ("scope", GRAPH_SCOPE),
    ]);
    let resp = s.post_token(body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store, no-cache");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3599);
    assert_eq!(v["ext_expires_in"], 3599);
    assert!(v["access_token"].as_str().unwrap().len() > 40);
}

#[tokio::test]
async fn token_with_basic_client_auth() {
    let s = sim().await;
    let creds =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", s.config.client_id, s.config.client_secret));
    let resp = s
        .http
        .post(s.token_url())
        .header(AUTHORIZATION, format!("Basic {creds}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("grant_type", "client_credentials"), ("scope", GRAPH_SCOPE)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn token_failures() {
    let s = sim().await;
    let (cid, secret) = (s.config.client_id.clone(), s.config.client_secret.clone());
    let good = |over: &[(&'static str, &'static str)]| {
        let mut pairs: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", cid.clone()),
            ("client_secret", secret.clone()),
            ("scope", GRAPH_SCOPE.into()),
        ];
        for (k, v) in over {
            pairs.retain(|(pk, _)| pk != k);
            if !v.is_empty() {
                pairs.push((k, (*v).to_owned()));
            }
        }
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        form(&refs)
    };

    let (st, err, code, _) = aad_error(s.post_token(good(&[("client_secret", "wrong")])).await).await;
    assert_eq!((st, err.as_str(), code), (401, "invalid_client", 7_000_215));

    let (st, err, code, _) =
        aad_error(s.post_token(good(&[("client_id", "11111111-2222-3333-4444-555555555555")])).await).await;
    assert_eq!((st, err.as_str(), code), (400, "unauthorized_client", 700_016));

    let (st, err, code, _) = aad_error(s.post_token(good(&[("grant_type", "")])).await).await;
    assert_eq!((st, err.as_str(), code), (400, "invalid_request", 900_144));

    let (st, err, code, _) = aad_error(s.post_token(good(&[("grant_type", "password")])).await).await;
    assert_eq!((st, err.as_str(), code), (400, "unsupported_grant_type", 70_003));

    let (st, err, code, _) =
        aad_error(s.post_token(good(&[("scope", "https://graph.microsoft.com/Group.Read.All")])).await).await;
    assert_eq!((st, err.as_str(), code), (400, "invalid_scope", 1_002_012));

    let (st, err, code, _) = aad_error(s.post_token(good(&[("client_secret", "")])).await).await;
    assert_eq!((st, err.as_str(), code), (401, "invalid_client", 7_000_216));

    let (st, err, code, _) = aad_error(
        s.post_token(good(&[
            ("client_secret", ""),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", "eyJhbGciOiJQUzI1NiJ9.e30.sig"),
        ]))
        .await,
    )
    .await;
    assert_eq!((st, err.as_str(), code), (401, "invalid_client", 700_027));

    let wrong_tenant = s.url("/99999999-0000-0000-0000-000000000000/oauth2/v2.0/token");
    let resp = s
        .http
        .post(wrong_tenant)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(good(&[]))
        .send()
        .await
        .unwrap();
    let (st, err, code, _) = aad_error(resp).await;
    assert_eq!((st, err.as_str(), code), (400, "invalid_request", 90_002));
}

#[tokio::test]
async fn graph_requires_a_valid_bearer_token() {
    let s = sim().await;
    let url = s.url("/v1.0/groups/delta");

    let resp = s.http.get(&url).header("client-request-id", "abc-123").send().await.unwrap();
    assert_eq!(resp.headers()["client-request-id"], "abc-123");
    let request_id = resp.headers()["request-id"].to_str().unwrap().to_owned();
    assert!(resp.headers().contains_key("www-authenticate"));
    let (status, code, body) = error_code(resp).await;
    assert_eq!((status, code.as_str()), (401, "InvalidAuthenticationToken"));
    assert_eq!(body["error"]["innerError"]["request-id"], request_id.as_str());
    assert_eq!(body["error"]["innerError"]["client-request-id"], "abc-123");
    assert!(body["error"]["innerError"]["date"].is_string());

    let resp = s.http.get(&url).bearer_auth("forged").send().await.unwrap();
    let (status, code, _) = error_code(resp).await;
    assert_eq!((status, code.as_str()), (401, "InvalidAuthenticationToken"));

    let resp = s.get(&url).await;
    assert_eq!(resp.status(), 200);
    // Without a client-request-id, Graph repeats the request-id.
    assert_eq!(resp.headers()["client-request-id"], resp.headers()["request-id"]);
}

#[tokio::test]
async fn expired_access_token_is_refused() {
    let s = sim().await;
    s.admin
        .update_settings(&graph_sim::SettingsPatch { token_lifetime_secs: Some(1), ..Default::default() })
        .await
        .unwrap();
    let short = s.fetch_token().await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let resp = s.http.get(s.url("/v1.0/users/delta")).bearer_auth(short).send().await.unwrap();
    let (status, _, body) = error_code(resp).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"));
}
