//! Change-notification subscriptions (graph-api.md §6): validation handshake on both
//! URLs, notifications with clientState on every change, renewal, deletion, expiry
//! and lifecycle notifications.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use graph_sim::NewGroup;
use serde_json::{Value, json};

use crate::common::{Sim, sim};

#[derive(Clone, Default)]
struct Receiver {
    /// Whether the handshake is answered correctly.
    echo: bool,
    received: Arc<Mutex<Vec<Value>>>,
    validations: Arc<Mutex<Vec<String>>>,
}

async fn receive(
    State(r): State<Receiver>,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(token) = q.get("validationToken") {
        r.validations.lock().unwrap().push(token.clone());
        if !r.echo {
            return (StatusCode::OK, "wrong").into_response();
        }
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], token.clone()).into_response();
    }
    r.received.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
    StatusCode::ACCEPTED.into_response()
}

async fn receiver(echo: bool) -> (String, Receiver) {
    let r = Receiver { echo, ..Receiver::default() };
    let app = Router::new().route("/hook", post(receive)).route("/life", post(receive)).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, r)
}

fn in_minutes(minutes: u64) -> String {
    let at = std::time::SystemTime::now() + Duration::from_secs(minutes * 60);
    iso(at)
}

fn iso(at: std::time::SystemTime) -> String {
    let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // Reuse the HTTP-date-free civil conversion via chrono-less arithmetic.
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

async fn subscribe(s: &Sim, body: Value) -> reqwest::Response {
    s.http.post(s.url("/v1.0/subscriptions")).bearer_auth(&s.token).json(&body).send().await.unwrap()
}

fn request(url: &str, resource: &str, expiration: String) -> Value {
    json!({"changeType": "updated,deleted", "notificationUrl": format!("{url}/hook"),
           "lifecycleNotificationUrl": format!("{url}/life"), "resource": resource,
           "expirationDateTime": expiration, "clientState": "s3cret-state"})
}

async fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn subscription_is_created_only_after_both_urls_pass_the_validation_handshake() {
    let s = sim().await;
    let (url, r) = receiver(true).await;
    let resp = subscribe(&s, request(&url, "/groups", in_minutes(60))).await;
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["resource"], "/groups");
    assert_eq!(created["clientState"], "s3cret-state");
    let validations = r.validations.lock().unwrap().clone();
    assert_eq!(validations.len(), 2, "notification and lifecycle URL are validated");
    assert!(validations[0].contains(' '), "the token arrives URL-decoded");

    let (bad_url, _) = receiver(false).await;
    let resp = subscribe(&s, request(&bad_url, "/groups", in_minutes(60))).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("validation"));

    let resp = subscribe(&s, request(&url, "/groups", in_minutes(41_761))).await;
    assert_eq!(resp.status(), 400, "over 41,760 minutes");
    let mut created_only = request(&url, "/users", in_minutes(60));
    created_only["changeType"] = json!("created");
    assert_eq!(subscribe(&s, created_only).await.status(), 400);
    let unauthenticated =
        s.http.post(s.url("/v1.0/subscriptions")).json(&request(&url, "/groups", in_minutes(60))).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test]
async fn changes_notify_the_callback_with_client_state_until_deleted() {
    let s = sim().await;
    let (url, r) = receiver(true).await;
    let created: Value = subscribe(&s, request(&url, "/groups", in_minutes(60))).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let group = s.admin.create_group(&NewGroup::default()).await.unwrap().group.id;
    assert!(wait_for(|| !r.received.lock().unwrap().is_empty()).await);
    let first = r.received.lock().unwrap()[0].clone();
    let item = &first["value"][0];
    assert_eq!(item["clientState"], "s3cret-state");
    assert_eq!(item["subscriptionId"], id.as_str());
    assert_eq!(item["changeType"], "updated");
    assert_eq!(item["resource"], format!("Groups/{group}"));
    assert_eq!(item["resourceData"]["id"], group.to_string());

    // A user change does not concern a /groups subscription.
    s.admin.create_user(&graph_sim::NewUser::default()).await.unwrap();
    s.admin.delete_group(group, true).await.unwrap();
    assert!(wait_for(|| r.received.lock().unwrap().len() >= 2).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all = r.received.lock().unwrap().clone();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1]["value"][0]["changeType"], "deleted");

    let renewed = s
        .http
        .patch(s.url(&format!("/v1.0/subscriptions/{id}")))
        .bearer_auth(&s.token)
        .json(&json!({"expirationDateTime": in_minutes(120)}))
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 200);
    let deleted =
        s.http.delete(s.url(&format!("/v1.0/subscriptions/{id}"))).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    s.admin.create_group(&NewGroup::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.received.lock().unwrap().len(), 2, "no notification after DELETE");
}

#[tokio::test]
async fn expired_subscriptions_stop_and_lifecycle_notifications_reach_the_lifecycle_url() {
    let s = sim().await;
    let (url, r) = receiver(true).await;
    let soon = iso(std::time::SystemTime::now() + Duration::from_secs(2));
    let short: Value = subscribe(&s, request(&url, "/users", soon)).await.json().await.unwrap();
    let long: Value = subscribe(&s, request(&url, "/groups", in_minutes(60))).await.json().await.unwrap();
    let long_id: uuid::Uuid = long["id"].as_str().unwrap().parse().unwrap();
    assert!(s.admin.send_lifecycle_notification(long_id, "reauthorizationRequired").await.unwrap());
    let lifecycle = r.received.lock().unwrap()[0].clone();
    assert_eq!(lifecycle["value"][0]["lifecycleEvent"], "reauthorizationRequired");
    assert_eq!(lifecycle["value"][0]["clientState"], "s3cret-state");
    let views = s.admin.subscriptions().await.unwrap();
    assert!(views.iter().any(|v| v.id == long_id && v.reauthorization_required));

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let gone = s
        .http
        .get(s.url(&format!("/v1.0/subscriptions/{}", short["id"].as_str().unwrap())))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404, "expired");
    s.admin.create_user(&graph_sim::NewUser::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.received.lock().unwrap().len(), 1, "no user notification after expiry");
}
