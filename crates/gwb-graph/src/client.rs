//! HTTP side: tokens, retries and error classification.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use gwb_runtime::backoff::Backoff;
use gwb_runtime::clock::Clock;
use gwb_runtime::secret::Secret;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::budget::Budget;
use crate::credential::Credential;
use crate::delta::{DeltaPage, parse_page};
use crate::subscription::{NewSubscription, Subscription, rfc3339};
use crate::token::{AccessToken, TokenFailure, request_token, without_url};
use crate::{GraphConfig, GraphError};
use gwb_core::event::{Resource, WritebackConfiguration};
use gwb_core::members::MemberKind;

// onPremisesSecurityIdentifier: a group converted from AD keeps its AD group's SID (F3).
const GROUP_SELECT: &str = "id,displayName,description,mailNickname,mail,mailEnabled,securityEnabled,groupTypes,proxyAddresses,onPremisesSyncEnabled,onPremisesSecurityIdentifier,members";
const USER_SELECT: &str = "id,displayName,userPrincipalName,userType,onPremisesSecurityIdentifier,onPremisesSyncEnabled,onPremisesDistinguishedName,onPremisesSamAccountName";

pub struct GraphClient {
    config: GraphConfig,
    credential: Credential,
    http: reqwest::Client,
    token: Mutex<Option<(AccessToken, Duration)>>,
    /// Wall-clock time for `Retry-After` dates and certificate assertions.
    clock: Clock,
    /// 0.5 s doubling up to `graph.max_backoff_seconds`, when Graph sends no `Retry-After`.
    backoff: Backoff,
    /// Resource units spent against Graph's directory-read budget.
    budget: std::sync::Mutex<Budget>,
    /// Beta only: whether `writebackConfiguration` is read in the groups delta
    /// `$select` (the default) or, after Graph refused it there, per changed group.
    writeback_in_delta: AtomicBool,
}

/// Where the collector reads groups' `writebackConfiguration` (beta) from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritebackSource {
    /// v1.0 has no such property.
    NotRead,
    /// In the groups delta `$select`.
    DeltaSelect,
    /// `GET /beta/groups/{id}?$select=writebackConfiguration` per changed group,
    /// batched 20 to a `$batch` request, because Graph refused it in the delta `$select`.
    PerGroup,
}

impl WritebackSource {
    pub fn describe(self) -> &'static str {
        match self {
            WritebackSource::NotRead => "not read (v1.0 has no writebackConfiguration)",
            WritebackSource::DeltaSelect => "read in the groups delta $select",
            WritebackSource::PerGroup => {
                "read per changed group ($batch, 20 per request): Graph refused it in the delta $select"
            }
        }
    }
}

/// Requests in one JSON batch (Graph's limit).
const BATCH_SIZE: usize = 20;

impl GraphClient {
    pub fn new(config: GraphConfig, credential: Credential) -> Result<Self, GraphError> {
        for (key, value) in
            [("graph.login_endpoint", &config.login_endpoint), ("graph.graph_endpoint", &config.graph_endpoint)]
        {
            url::Url::parse(value).map_err(|e| GraphError::Config(format!("{key} = {value:?}: {e}")))?;
        }
        if !matches!(config.api_version.as_str(), "v1.0" | "beta") {
            return Err(GraphError::Config(format!(
                "graph.api_version must be \"v1.0\" or \"beta\", not {:?}",
                config.api_version
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.request_timeout_seconds.max(1)))
            .user_agent(concat!("gwb-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GraphError::Config(format!("HTTP client: {e}")))?;
        let backoff =
            Backoff::new(Duration::from_millis(500), Duration::from_secs(config.max_backoff_seconds.max(1)), 0.5);
        Ok(GraphClient {
            credential,
            http,
            token: Mutex::new(None),
            clock: Clock::system(),
            backoff,
            budget: std::sync::Mutex::new(Budget::new(config.resource_units_per_10s)),
            writeback_in_delta: AtomicBool::new(true),
            config,
        })
    }

    pub fn writeback_source(&self) -> WritebackSource {
        match (self.config.is_beta(), self.writeback_in_delta.load(Ordering::Relaxed)) {
            (false, _) => WritebackSource::NotRead,
            (true, true) => WritebackSource::DeltaSelect,
            (true, false) => WritebackSource::PerGroup,
        }
    }

    /// From now on `writebackConfiguration` is read per changed group: the groups delta
    /// query no longer selects it.
    pub fn read_writeback_per_group(&self) {
        self.writeback_in_delta.store(false, Ordering::Relaxed);
    }

    /// Whether Graph's refusal of the groups delta query is a refusal of
    /// `writebackConfiguration` in its `$select`.
    pub fn refuses_writeback_select(&self, error: &GraphError) -> bool {
        self.writeback_source() == WritebackSource::DeltaSelect
            && matches!(error, GraphError::Rejected { status: 400, message, .. } if message.contains("writebackConfiguration"))
    }

    /// The kinds of these directory objects (`POST /directoryObjects/getByIds`, 1,000 ids
    /// a request, 5 resource units each), for member links Graph sent without
    /// `@odata.type` (F21). Objects that are gone are left out.
    pub async fn member_kinds(&self, ids: &[String]) -> Result<HashMap<String, MemberKind>, GraphError> {
        let url = format!(
            "{}/{}/directoryObjects/getByIds",
            self.config.graph_endpoint.trim_end_matches('/'),
            self.config.api_version
        );
        let mut kinds = HashMap::new();
        for chunk in ids.chunks(1000) {
            let body = serde_json::json!({ "ids": chunk, "types": ["user", "group", "device", "orgContact", "servicePrincipal"] });
            let answer = self.send_costing(Method::POST, &url, Some(&body), 5).await?;
            let malformed = |reason: String| GraphError::Malformed { url: url.clone(), reason };
            let parsed: Value = serde_json::from_slice(&answer).map_err(|e| malformed(e.to_string()))?;
            let values = parsed["value"].as_array().ok_or_else(|| malformed("no `value` array".into()))?;
            for object in values {
                if let (Some(id), Some(odata_type)) = (object["id"].as_str(), object["@odata.type"].as_str()) {
                    kinds.insert(id.to_ascii_lowercase(), crate::delta::member_kind(Some(odata_type)));
                }
            }
        }
        Ok(kinds)
    }

    /// The groups' `writebackConfiguration` by id, read with `$batch` (20 groups a
    /// request). A group that is gone (404) is left out; a throttled or failed request
    /// in the batch fails the call, so the caller's page is read again.
    pub async fn writeback_configurations(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, WritebackConfiguration>, GraphError> {
        let url = format!("{}/{}/$batch", self.config.graph_endpoint.trim_end_matches('/'), self.config.api_version);
        let mut found = HashMap::new();
        for chunk in ids.chunks(BATCH_SIZE) {
            let requests: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(n, id)| {
                    serde_json::json!({
                        "id": n.to_string(),
                        "method": "GET",
                        "url": format!("/groups/{}?$select=id,writebackConfiguration", url_segment(id)),
                    })
                })
                .collect();
            let body = serde_json::json!({ "requests": requests });
            // Graph counts each request of a batch on its own.
            let answer = self.send_costing(Method::POST, &url, Some(&body), chunk.len() as u32).await?;
            let malformed = |reason: String| GraphError::Malformed { url: url.clone(), reason };
            let body: Value = serde_json::from_slice(&answer).map_err(|e| malformed(e.to_string()))?;
            let responses = body["responses"].as_array().ok_or_else(|| malformed("no `responses` array".into()))?;
            for response in responses {
                let index: usize = response["id"].as_str().and_then(|id| id.parse().ok()).unwrap_or(usize::MAX);
                let Some(id) = chunk.get(index) else {
                    return Err(malformed(format!("unknown response id {}", response["id"])));
                };
                match response["status"].as_u64() {
                    Some(200) => {
                        let config = &response["body"]["writebackConfiguration"];
                        found.insert(
                            id.clone(),
                            WritebackConfiguration {
                                is_enabled: config["isEnabled"].as_bool(),
                                on_premises_group_type: config["onPremisesGroupType"].as_str().map(str::to_string),
                            },
                        );
                    }
                    Some(404) => {}
                    status => {
                        return Err(GraphError::Unavailable {
                            attempts: 1,
                            last: format!("$batch request for group {id} answered {status:?}"),
                        });
                    }
                }
            }
        }
        Ok(found)
    }

    /// First request of a full round. Query parameters go on this request only; every
    /// later link is followed verbatim.
    pub fn initial_url(&self, resource: Resource) -> String {
        self.initial_url_for(resource, self.writeback_source())
    }

    /// [`GraphClient::initial_url`] as it is with `writebackConfiguration` read from `source`.
    pub fn initial_url_for(&self, resource: Resource, source: WritebackSource) -> String {
        let select = match resource {
            Resource::Users => USER_SELECT.to_string(),
            Resource::Groups if source == WritebackSource::DeltaSelect => {
                format!("{GROUP_SELECT},writebackConfiguration")
            }
            Resource::Groups => GROUP_SELECT.to_string(),
        };
        format!(
            "{}/{}/{}/delta?$select={}",
            self.config.graph_endpoint.trim_end_matches('/'),
            self.config.api_version,
            resource.path(),
            select
        )
    }

    /// Fetches one delta page, retrying throttling and transient faults.
    pub async fn fetch_page(&self, resource: Resource, url: &str) -> Result<DeltaPage, GraphError> {
        let body = self.send(Method::GET, url, None).await?;
        parse_page(resource, &body).map_err(|reason| GraphError::Malformed { url: url.to_string(), reason })
    }

    fn subscriptions_url(&self) -> String {
        // Subscriptions are a v1.0 feature for users and groups, whatever version the
        // delta rounds read.
        format!("{}/v1.0/subscriptions", self.config.graph_endpoint.trim_end_matches('/'))
    }

    /// `POST /subscriptions`: Graph validates both URLs with a handshake before it
    /// answers, so the receiver must already be listening.
    pub async fn create_subscription(&self, new: &NewSubscription<'_>) -> Result<Subscription, GraphError> {
        let mut body = serde_json::json!({
            "changeType": new.change_type,
            "notificationUrl": new.notification_url,
            "resource": new.resource,
            "expirationDateTime": rfc3339(new.expiration),
            "clientState": new.client_state.expose(),
        });
        if let Some(lifecycle) = new.lifecycle_notification_url {
            body["lifecycleNotificationUrl"] = lifecycle.into();
        }
        let url = self.subscriptions_url();
        let answer = self.send(Method::POST, &url, Some(&body)).await?;
        serde_json::from_slice(&answer).map_err(|e| GraphError::Malformed { url, reason: e.to_string() })
    }

    /// `PATCH /subscriptions/{id}` with a new expiration (renewal, also the answer to
    /// `reauthorizationRequired`).
    pub async fn renew_subscription(&self, id: &str, expiration: SystemTime) -> Result<Subscription, GraphError> {
        let url = format!("{}/{}", self.subscriptions_url(), url_segment(id));
        let body = serde_json::json!({"expirationDateTime": rfc3339(expiration)});
        let answer = self.send(Method::PATCH, &url, Some(&body)).await?;
        serde_json::from_slice(&answer).map_err(|e| GraphError::Malformed { url, reason: e.to_string() })
    }

    pub async fn delete_subscription(&self, id: &str) -> Result<(), GraphError> {
        let url = format!("{}/{}", self.subscriptions_url(), url_segment(id));
        self.send(Method::DELETE, &url, None).await.map(drop)
    }

    /// (resource units spent in the last 10 s, the most in any 10 s, the budget).
    pub fn budget_usage(&self) -> (u32, u32, u32) {
        self.budget.lock().unwrap_or_else(std::sync::PoisonError::into_inner).usage(Instant::now())
    }

    /// Waits until `cost` resource units fit the budget, then counts them spent.
    async fn pace(&self, cost: u32) {
        loop {
            let wait = {
                let mut budget = self.budget.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let now = Instant::now();
                let wait = budget.wait_before(now, cost);
                if wait.is_zero() {
                    budget.spend(now, cost);
                }
                wait
            };
            if wait.is_zero() {
                return;
            }
            tracing::debug!(wait_ms = wait.as_millis() as u64, cost, "pacing under Graph's resource-unit budget");
            tokio::time::sleep(wait).await;
        }
    }

    async fn send(&self, method: Method, url: &str, body: Option<&Value>) -> Result<Vec<u8>, GraphError> {
        self.send_costing(method, url, body, 1).await
    }

    /// [`GraphClient::send`] of a request estimated at `cost` resource units (Graph's
    /// `x-ms-resource-unit` corrects the estimate).
    async fn send_costing(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        cost: u32,
    ) -> Result<Vec<u8>, GraphError> {
        let mut attempts = 0u32;
        let mut renewed_after_401 = false;
        loop {
            attempts += 1;
            self.pace(cost).await;
            let token = self.access_token().await?;
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token.expose())
                .header("client-request-id", request_id());
            if let Some(body) = body {
                request = request.json(body);
            }
            let sent = request.send().await;
            let metrics = gwb_runtime::metrics::global();
            if let Some(metrics) = metrics {
                metrics.graph_request(sent.as_ref().ok().map(|r| r.status().as_u16()));
            }
            let response = match sent {
                Ok(response) => response,
                Err(error) => {
                    let last = without_url(&error);
                    self.pause_before_retry(attempts, None, &last).await?;
                    continue;
                }
            };
            let status = response.status();
            let charged = response
                .headers()
                .get("x-ms-resource-unit")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok());
            if let Some(extra) = charged.and_then(|charged| charged.checked_sub(cost)) {
                self.budget.lock().unwrap_or_else(std::sync::PoisonError::into_inner).spend(Instant::now(), extra);
            }
            let wait = retry_after(response.headers(), self.clock.now());
            let location =
                response.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = match response.bytes().await {
                Ok(body) => body.to_vec(),
                Err(error) => {
                    let last = without_url(&error);
                    self.pause_before_retry(attempts, None, &last).await?;
                    continue;
                }
            };
            if status.is_success() {
                return Ok(body);
            }
            let (code, message) = error_code(&body);
            match status {
                StatusCode::GONE => {
                    return Err(GraphError::ResyncRequired { reason: "410 Gone".into(), location });
                }
                StatusCode::UNAUTHORIZED if !renewed_after_401 => {
                    renewed_after_401 = true;
                    *self.token.lock().await = None;
                    attempts -= 1;
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(GraphError::Unauthorized(format!(
                        "Graph answered 401 after a token renewal: {code}: {message}"
                    )));
                }
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
                    let last = format!("{status} {code}");
                    tracing::warn!(%status, retry_after_ms = wait.map(|w| w.as_millis() as u64), "Graph throttled or unavailable");
                    self.pause_before_retry(attempts, wait, &last).await?;
                }
                s if s.is_client_error() && is_resync_code(&body) => {
                    return Err(GraphError::ResyncRequired { reason: format!("{status} {code}"), location: None });
                }
                s if s.is_server_error() => {
                    self.pause_before_retry(attempts, wait, &format!("{status} {code}")).await?;
                }
                _ => {
                    return Err(GraphError::Rejected { status: status.as_u16(), code, message });
                }
            }
        }
    }

    async fn pause_before_retry(&self, attempts: u32, wait: Option<Duration>, last: &str) -> Result<(), GraphError> {
        if attempts > self.config.max_retries {
            return Err(GraphError::Unavailable { attempts, last: last.to_string() });
        }
        let delay = wait.unwrap_or_else(|| self.backoff.delay(attempts));
        tokio::time::sleep(delay).await;
        Ok(())
    }

    async fn access_token(&self) -> Result<Secret, GraphError> {
        let mut cached = self.token.lock().await;
        let now = Instant::now();
        if let Some((token, lifetime)) = cached.as_ref()
            && token.is_fresh(now, *lifetime)
        {
            return Ok(token.value.clone());
        }
        let scope = self.config.scope();
        let mut attempt = 0;
        let fresh = loop {
            attempt += 1;
            match request_token(
                &self.http,
                &self.config.token_url(),
                &self.config.client_id,
                &self.credential,
                &scope,
                now,
                self.clock.now(),
            )
            .await
            {
                Ok(fresh) => break fresh,
                Err(TokenFailure::Retry { last, wait }) if attempt <= self.config.max_retries => {
                    // Entra's Retry-After when it sends one (F19), else the backoff.
                    let delay = wait.unwrap_or_else(|| self.backoff.delay(attempt));
                    tracing::warn!(attempt, %last, retry_in_ms = delay.as_millis() as u64, "token endpoint unavailable");
                    tokio::time::sleep(delay).await;
                }
                Err(TokenFailure::Retry { last, .. }) => {
                    return Err(GraphError::Unavailable { attempts: attempt, last });
                }
                Err(TokenFailure::Fatal(error)) => return Err(error),
            }
        };
        let value = fresh.0.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }
}

/// A subscription id as one path segment (Graph's ids are GUIDs; anything else is
/// escaped rather than trusted).
fn url_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// A GUID, the form Graph documents for `client-request-id` (and echoes in its errors
/// and logs, where support looks for it).
fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `Retry-After` as decimal seconds (Graph sends e.g. `2.128`) or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO).min(Duration::from_secs(3600)))
}

/// Top-level `error.code` and `error.message`.
fn error_code(body: &[u8]) -> (String, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let code = error.and_then(|e| e.get("code")).and_then(Value::as_str).unwrap_or("unknown");
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or("");
    (code.to_string(), message.to_string())
}

/// `syncStateNotFound` / `resyncRequired` as the code or any nested inner code, any
/// casing (`innererror` and `innerError` both occur).
pub(crate) fn is_resync_code(body: &[u8]) -> bool {
    let Ok(parsed) = serde_json::from_slice::<Value>(body) else { return false };
    let mut current = parsed.get("error");
    while let Some(error) = current {
        if let Some(code) = error.get("code").and_then(Value::as_str)
            && (code.eq_ignore_ascii_case("syncStateNotFound") || code.eq_ignore_ascii_case("resyncRequired"))
        {
            return true;
        }
        current = error.get("innererror").or_else(|| error.get("innerError"));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn client_request_ids_are_guids() {
        let id = request_id();
        assert_eq!(uuid::Uuid::parse_str(&id).map(|u| u.to_string()), Ok(id.clone()), "{id}");
        assert_ne!(request_id(), id);
    }

    #[test]
    fn retry_after_decimal_and_date() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2.128"));
        assert_eq!(retry_after(&headers, Clock::system().now()), Some(Duration::from_millis(2128)));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(5));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(5)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn resync_codes_nested_any_case() {
        assert!(is_resync_code(br#"{"error":{"code":"SyncStateNotFound"}}"#));
        assert!(is_resync_code(
            br#"{"error":{"code":"badRequest","innerError":{"code":"x","innererror":{"code":"resyncrequired"}}}}"#
        ));
        assert!(!is_resync_code(br#"{"error":{"code":"badRequest","message":"syncStateNotFound"}}"#));
        assert!(!is_resync_code(b"not json"));
    }
}
