//! Change notifications (graph-api.md §6): `/subscriptions` with the validation
//! handshake, renewal, deletion and expiry, and delivery of basic notifications to the
//! callback on every change to a subscribed user or group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::app::{App, lock};
use crate::auth;
use crate::errors::{ApiError, GRAPH_JSON, RequestIds, json_response};
use crate::model::ObjectKind;
use crate::store::{Change, REMOVED, Tenant};
use crate::time;

/// Maximum lifetime of user and group subscriptions: 41,760 minutes.
const MAX_LIFETIME_MS: u64 = 41_760 * 60_000;
/// Subscriptions per app and tenant (Graph's quota for users and groups).
const MAX_PER_APP: usize = 100;
/// Graph gives the endpoint 10 s to echo the validation token.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Notifications per POST; a bulk change (seed, generate) sends at most this many
/// per subscription, which is enough to trigger the client's delta round.
const MAX_ITEMS: usize = 1000;
/// Delivery attempts per notification POST (Graph retries for up to 4 h).
const DELIVERY_ATTEMPTS: u32 = 3;

#[derive(Clone, Debug)]
pub struct Subscription {
    pub id: Uuid,
    pub resource: String,
    target: Target,
    pub change_type: String,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    pub client_state: Option<String>,
    pub expiration_ms: u64,
    pub reauthorization_required: bool,
    pub notifications_sent: u64,
}

/// What a subscription watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    AllUsers,
    AllGroups,
    User(Uuid),
    Group(Uuid),
    GroupMembers(Uuid),
}

fn parse_resource(resource: &str) -> Option<Target> {
    let segments: Vec<&str> = resource.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let id = |s: &str| Uuid::parse_str(s).ok();
    match segments.as_slice() {
        [r] if r.eq_ignore_ascii_case("users") => Some(Target::AllUsers),
        [r] if r.eq_ignore_ascii_case("groups") => Some(Target::AllGroups),
        [r, u] if r.eq_ignore_ascii_case("users") => id(u).map(Target::User),
        [r, g] if r.eq_ignore_ascii_case("groups") => id(g).map(Target::Group),
        [r, g, m] if r.eq_ignore_ascii_case("groups") && m.eq_ignore_ascii_case("members") => {
            id(g).map(Target::GroupMembers)
        }
        _ => None,
    }
}

impl Subscription {
    fn to_graph(&self, app: &App) -> Value {
        json!({
            "id": self.id,
            "resource": self.resource,
            "applicationId": app.config.client_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_notification_url,
            "expirationDateTime": time::iso8601(self.expiration_ms),
            "creatorId": app.config.client_id,
            "includeResourceData": false,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": null,
            "encryptionCertificateId": null,
            "notificationQueryOptions": null,
            "notificationUrlAppId": null,
        })
    }

    fn wants(&self, change_type: &str) -> bool {
        self.change_type.split(',').any(|c| c.trim().eq_ignore_ascii_case(change_type))
    }

    fn watches(&self, notice: &Notice) -> bool {
        match (self.target, notice.kind) {
            (Target::AllUsers, ObjectKind::User) | (Target::AllGroups, ObjectKind::Group) => true,
            (Target::User(id), ObjectKind::User) | (Target::Group(id), ObjectKind::Group) => id == notice.id,
            (Target::GroupMembers(id), ObjectKind::Group) => id == notice.id && !notice.members.is_empty(),
            _ => false,
        }
    }
}

/// The subscriptions of the one registered app.
#[derive(Default)]
pub struct Subscriptions {
    map: HashMap<Uuid, Subscription>,
}

impl Subscriptions {
    /// Drops expired subscriptions (Graph deletes them) and returns the rest.
    fn active(&mut self) -> Vec<Subscription> {
        let now = time::now_ms();
        self.map.retain(|_, s| s.expiration_ms > now);
        self.map.values().cloned().collect()
    }

    fn get(&mut self, id: Uuid) -> Option<&mut Subscription> {
        let now = time::now_ms();
        self.map.retain(|_, s| s.expiration_ms > now);
        self.map.get_mut(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One changed user or group, as a notification describes it.
#[derive(Clone, Debug)]
pub struct Notice {
    kind: ObjectKind,
    id: Uuid,
    deleted: bool,
    /// Member links that changed: (member id, removed).
    members: Vec<(Uuid, bool)>,
}

/// The notices for the changes committed after `since` (called with the tenant lock
/// held, right after a commit).
pub fn notices_since(tenant: &Tenant, since: u64) -> Vec<Notice> {
    let mut by_object: HashMap<u32, Notice> = HashMap::new();
    let mut order = Vec::new();
    for e in tenant.log_since(since) {
        let (idx, member) = match e.change {
            Change::Object { idx, .. } => (idx, None),
            Change::Link { group, member } => (group, Some(member)),
        };
        let obj = tenant.obj(idx);
        if !matches!(obj.kind, ObjectKind::User | ObjectKind::Group) {
            continue;
        }
        let n = by_object.entry(idx).or_insert_with(|| {
            order.push(idx);
            Notice { kind: obj.kind, id: obj.id, deleted: false, members: Vec::new() }
        });
        match (e.change, member) {
            (Change::Object { mask, .. }, _) => n.deleted = mask & REMOVED != 0,
            (_, Some(member)) => {
                let removed = !obj.members.contains(&member);
                n.members.push((tenant.obj(member).id, removed));
            }
            _ => {}
        }
    }
    order.into_iter().filter_map(|idx| by_object.remove(&idx)).collect()
}

/// Delivers notices to the matching subscriptions until the sender side is dropped.
pub async fn deliver(app: Arc<App>, mut notices: mpsc::UnboundedReceiver<Vec<Notice>>) {
    while let Some(batch) = notices.recv().await {
        let active = lock(&app.subscriptions).active();
        for sub in active {
            let items: Vec<Value> = batch
                .iter()
                .filter(|n| sub.watches(n))
                .filter(|n| sub.wants(if n.deleted { "deleted" } else { "updated" }))
                .take(MAX_ITEMS)
                .map(|n| notification(&app, &sub, n))
                .collect();
            if items.is_empty() {
                continue;
            }
            let app = app.clone();
            tokio::spawn(async move {
                let count = items.len() as u64;
                let body = json!({ "value": items });
                if post_with_retries(&app, &sub.notification_url, &body).await {
                    if let Some(s) = lock(&app.subscriptions).map.get_mut(&sub.id) {
                        s.notifications_sent += count;
                    }
                } else {
                    tracing::warn!(subscription = %sub.id, "notification delivery failed");
                }
            });
        }
    }
}

fn notification(app: &App, sub: &Subscription, n: &Notice) -> Value {
    let (type_name, segment) = match n.kind {
        ObjectKind::User => ("#Microsoft.Graph.User", "Users"),
        _ => ("#Microsoft.Graph.Group", "Groups"),
    };
    let mut resource_data = json!({
        "@odata.type": type_name,
        "@odata.id": format!("{segment}/{}", n.id),
        "id": n.id,
        "organizationId": app.config.tenant_id,
    });
    if !n.members.is_empty() {
        resource_data["members@delta"] = n
            .members
            .iter()
            .map(
                |(id, removed)| {
                    if *removed { json!({"id": id, "@removed": {"reason": "deleted"}}) } else { json!({"id": id}) }
                },
            )
            .collect();
    }
    json!({
        "subscriptionId": sub.id,
        "subscriptionExpirationDateTime": time::iso8601(sub.expiration_ms),
        "clientState": sub.client_state,
        "changeType": if n.deleted { "deleted" } else { "updated" },
        "resource": format!("{segment}/{}", n.id),
        "tenantId": app.config.tenant_id,
        "resourceData": resource_data,
    })
}

async fn post_with_retries(app: &App, url: &str, body: &Value) -> bool {
    for attempt in 1..=DELIVERY_ATTEMPTS {
        let sent = app.http.post(url).timeout(Duration::from_secs(3)).json(body).send().await;
        match sent {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => tracing::debug!(status = %r.status(), attempt, "notification refused"),
            Err(e) => tracing::debug!(error = %e, attempt, "notification not delivered"),
        }
        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
    }
    false
}

/// `POST {url}?validationToken=…`; the endpoint must echo the decoded token as
/// `text/plain` with 200 within 10 s.
async fn handshake(app: &App, url: &str) -> Result<(), String> {
    let token =
        format!("Validation: Testing client application reachability for subscription Request-Id: {}", Uuid::new_v4());
    let mut target = url::Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    target.query_pairs_mut().append_pair("validationToken", &token);
    let response = app
        .http
        .post(target)
        .timeout(HANDSHAKE_TIMEOUT)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .send()
        .await
        .map_err(|e| format!("the validation request to {url} failed: {e}"))?;
    let status = response.status();
    let text_plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/plain"));
    let body = response.text().await.unwrap_or_default();
    if status != reqwest::StatusCode::OK {
        return Err(format!("{url} answered {status} to the validation request"));
    }
    if !text_plain {
        return Err(format!("{url} did not answer the validation request with text/plain"));
    }
    if body != token {
        return Err(format!("{url} did not echo the validation token"));
    }
    Ok(())
}

fn validation_failed(message: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "ValidationError",
        format!(
            "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request. ({message})"
        ),
    )
}

fn parse_expiration(value: Option<&Value>) -> Result<u64, ApiError> {
    let text = value
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("expirationDateTime is required (ISO 8601, UTC)"))?;
    let ms = time::parse_iso8601(text)
        .ok_or_else(|| ApiError::bad_request(format!("expirationDateTime '{text}' is not an ISO 8601 date")))?;
    let now = time::now_ms();
    if ms <= now {
        return Err(ApiError::bad_request("Subscription expiration must be in the future."));
    }
    if ms > now + MAX_LIFETIME_MS {
        return Err(ApiError::bad_request("Subscription expiration can only be 41760 minutes in the future."));
    }
    Ok(ms)
}

fn check_url(field: &str, value: &str) -> Result<(), ApiError> {
    match url::Url::parse(value) {
        // Graph requires https; graph-sim also takes http so that tests and the demo
        // need no TLS on their receivers.
        Ok(u) if matches!(u.scheme(), "https" | "http") => Ok(()),
        _ => Err(ApiError::bad_request(format!("{field} '{value}' must be an absolute https URL"))),
    }
}

fn graph_reply(status: StatusCode, body: &Value) -> Response {
    json_response(status, body, GRAPH_JSON)
}

fn authorized(app: &App, headers: &HeaderMap, ids: &RequestIds) -> Result<(), Box<Response>> {
    auth::check_bearer(app, headers).map_err(|m| Box::new(auth::unauthorized(m, ids)))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!("The object was not found. Subscription '{id}' does not exist or has expired."),
    )
}

/// `POST /{version}/subscriptions`.
pub async fn create(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorized(&app, &headers, &ids) {
        return *r;
    }
    match create_inner(&app, &body).await {
        Ok(sub) => {
            tracing::info!(subscription = %sub.id, resource = %sub.resource, "subscription created");
            let mut v = sub.to_graph(&app);
            v["@odata.context"] = json!(format!("{}/v1.0/$metadata#subscriptions/$entity", app_base(&headers, &app)));
            graph_reply(StatusCode::CREATED, &v)
        }
        Err(e) => e.into_graph_response(&ids),
    }
}

fn app_base(headers: &HeaderMap, app: &App) -> String {
    match &app.config.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => format!("http://{}", headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost")),
    }
}

async fn create_inner(app: &App, body: &Bytes) -> Result<Subscription, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let field = |name: &str| v.get(name).and_then(Value::as_str);
    let resource = field("resource").ok_or_else(|| ApiError::bad_request("resource is required"))?.to_owned();
    let target = parse_resource(&resource).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Resource '{resource}' is not supported: graph-sim serves /users, /users/{{id}}, /groups, /groups/{{id}} and /groups/{{id}}/members"
        ))
    })?;
    let change_type = field("changeType").ok_or_else(|| ApiError::bad_request("changeType is required"))?.to_owned();
    for c in change_type.split(',') {
        if !matches!(c.trim(), "updated" | "deleted") {
            return Err(ApiError::bad_request(format!(
                "changeType '{}' is not supported for users and groups (use updated, deleted)",
                c.trim()
            )));
        }
    }
    let notification_url =
        field("notificationUrl").ok_or_else(|| ApiError::bad_request("notificationUrl is required"))?.to_owned();
    check_url("notificationUrl", &notification_url)?;
    let lifecycle_notification_url = field("lifecycleNotificationUrl").map(str::to_owned);
    if let Some(l) = &lifecycle_notification_url {
        check_url("lifecycleNotificationUrl", l)?;
    }
    let client_state = field("clientState").map(str::to_owned);
    if client_state.as_ref().is_some_and(|c| c.chars().count() > 128) {
        return Err(ApiError::bad_request("clientState must be at most 128 characters"));
    }
    if v.get("includeResourceData").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::bad_request(
            "Rich notifications (includeResourceData) are not supported for users and groups.",
        ));
    }
    let expiration_ms = parse_expiration(v.get("expirationDateTime"))?;
    if lock(&app.subscriptions).active().len() >= MAX_PER_APP {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "ExtensionError",
            format!("The subscription quota of {MAX_PER_APP} per application and tenant is used up."),
        ));
    }
    handshake(app, &notification_url).await.map_err(validation_failed)?;
    if let Some(l) = &lifecycle_notification_url {
        handshake(app, l).await.map_err(validation_failed)?;
    }
    let sub = Subscription {
        id: Uuid::new_v4(),
        resource,
        target,
        change_type,
        notification_url,
        lifecycle_notification_url,
        client_state,
        expiration_ms,
        reauthorization_required: false,
        notifications_sent: 0,
    };
    lock(&app.subscriptions).map.insert(sub.id, sub.clone());
    Ok(sub)
}

/// `GET /{version}/subscriptions`.
pub async fn list(State(app): State<Arc<App>>, Extension(ids): Extension<RequestIds>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&app, &headers, &ids) {
        return *r;
    }
    let subs = lock(&app.subscriptions).active();
    let value: Vec<Value> = subs.iter().map(|s| s.to_graph(&app)).collect();
    graph_reply(StatusCode::OK, &json!({ "value": value }))
}

/// `GET /{version}/subscriptions/{id}`.
pub async fn get(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorized(&app, &headers, &ids) {
        return *r;
    }
    let found = Uuid::parse_str(&id).ok().and_then(|u| lock(&app.subscriptions).get(u).cloned());
    match found {
        Some(s) => graph_reply(StatusCode::OK, &s.to_graph(&app)),
        None => not_found(&id).into_graph_response(&ids),
    }
}

/// `PATCH /{version}/subscriptions/{id}`: renews (`expirationDateTime`), which also
/// answers a `reauthorizationRequired` lifecycle notification.
pub async fn renew(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorized(&app, &headers, &ids) {
        return *r;
    }
    let result = serde_json::from_slice::<Value>(&body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
        .and_then(|v| parse_expiration(v.get("expirationDateTime")))
        .and_then(|ms| {
            let mut subs = lock(&app.subscriptions);
            let s = Uuid::parse_str(&id).ok().and_then(|u| subs.get(u)).ok_or_else(|| not_found(&id))?;
            s.expiration_ms = ms;
            s.reauthorization_required = false;
            Ok(s.clone())
        });
    match result {
        Ok(s) => graph_reply(StatusCode::OK, &s.to_graph(&app)),
        Err(e) => e.into_graph_response(&ids),
    }
}

/// `POST /{version}/subscriptions/{id}/reauthorize` → 204.
pub async fn reauthorize(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorized(&app, &headers, &ids) {
        return *r;
    }
    let mut subs = lock(&app.subscriptions);
    match Uuid::parse_str(&id).ok().and_then(|u| subs.get(u)) {
        Some(s) => {
            s.reauthorization_required = false;
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found(&id).into_graph_response(&ids),
    }
}

/// `DELETE /{version}/subscriptions/{id}` → 204.
pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorized(&app, &headers, &ids) {
        return *r;
    }
    let removed = Uuid::parse_str(&id).ok().and_then(|u| {
        let mut subs = lock(&app.subscriptions);
        subs.get(u)?;
        subs.map.remove(&u)
    });
    match removed {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => not_found(&id).into_graph_response(&ids),
    }
}

/// A subscription as the admin API shows it (the clientState itself is not shown).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionView {
    pub id: Uuid,
    pub resource: String,
    pub change_type: String,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    pub has_client_state: bool,
    pub expiration_date_time: String,
    pub reauthorization_required: bool,
    pub notifications_sent: u64,
}

impl From<&Subscription> for SubscriptionView {
    fn from(s: &Subscription) -> Self {
        SubscriptionView {
            id: s.id,
            resource: s.resource.clone(),
            change_type: s.change_type.clone(),
            notification_url: s.notification_url.clone(),
            lifecycle_notification_url: s.lifecycle_notification_url.clone(),
            has_client_state: s.client_state.is_some(),
            expiration_date_time: time::iso8601(s.expiration_ms),
            reauthorization_required: s.reauthorization_required,
            notifications_sent: s.notifications_sent,
        }
    }
}

/// `GET /admin/subscriptions`.
pub async fn admin_list(State(app): State<Arc<App>>) -> Response {
    let subs = lock(&app.subscriptions).active();
    let views: Vec<SubscriptionView> = subs.iter().map(SubscriptionView::from).collect();
    Json(views).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LifecycleRequest {
    #[serde(default = "reauthorization_required")]
    lifecycle_event: String,
}

fn reauthorization_required() -> String {
    "reauthorizationRequired".into()
}

/// `POST /admin/subscriptions/{id}/lifecycle`: sends a lifecycle notification
/// (default `reauthorizationRequired`) to the subscription's lifecycle URL now.
pub async fn admin_lifecycle(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let request: LifecycleRequest = if body.is_empty() {
        LifecycleRequest { lifecycle_event: reauthorization_required() }
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return ApiError::bad_request(format!("invalid request body: {e}")).into_graph_response(&ids);
            }
        }
    };
    if !matches!(request.lifecycle_event.as_str(), "reauthorizationRequired" | "subscriptionRemoved" | "missed") {
        return ApiError::bad_request("lifecycleEvent must be reauthorizationRequired, subscriptionRemoved or missed")
            .into_graph_response(&ids);
    }
    let sub = {
        let mut subs = lock(&app.subscriptions);
        match Uuid::parse_str(&id).ok().and_then(|u| subs.get(u)) {
            Some(s) => {
                if request.lifecycle_event == "reauthorizationRequired" {
                    s.reauthorization_required = true;
                }
                s.clone()
            }
            None => return not_found(&id).into_graph_response(&ids),
        }
    };
    let Some(url) = &sub.lifecycle_notification_url else {
        return ApiError::bad_request("the subscription has no lifecycleNotificationUrl").into_graph_response(&ids);
    };
    let body = json!({"value": [{
        "subscriptionId": sub.id,
        "subscriptionExpirationDateTime": time::iso8601(sub.expiration_ms),
        "tenantId": app.config.tenant_id,
        "clientState": sub.client_state,
        "lifecycleEvent": request.lifecycle_event,
    }]});
    let delivered = post_with_retries(&app, url, &body).await;
    Json(json!({ "delivered": delivered })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources() {
        let id = Uuid::new_v4();
        assert_eq!(parse_resource("/groups"), Some(Target::AllGroups));
        assert_eq!(parse_resource("users"), Some(Target::AllUsers));
        assert_eq!(parse_resource(&format!("/groups/{id}/members")), Some(Target::GroupMembers(id)));
        assert_eq!(parse_resource(&format!("/users/{id}")), Some(Target::User(id)));
        assert_eq!(parse_resource("/me/messages"), None);
    }
}
