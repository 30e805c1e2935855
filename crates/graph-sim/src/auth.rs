//! OAuth 2.0 client credentials as Entra's v2.0 token endpoint serves them, and
//! bearer-token checks for the Graph endpoints (graph-api.md §5).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use serde_json::{Value, json};

use crate::app::{App, lock};
use crate::assertion;
use crate::errors::{ApiError, RequestIds, json_response};
use crate::faults::{Endpoint, FaultKind};
use crate::time;

const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
/// Graph resource URIs of the public and national clouds.
const GRAPH_RESOURCES: [&str; 5] = [
    "https://graph.microsoft.com",
    "https://graph.microsoft.us",
    "https://dod-graph.microsoft.us",
    "https://microsoftgraph.chinacloudapi.cn",
    GRAPH_APP_ID,
];
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const AAD_JSON: &str = "application/json; charset=utf-8";

/// Issued access tokens and their expiry (unix ms).
#[derive(Default)]
pub struct TokenStore {
    tokens: HashMap<String, u64>,
    issued: u64,
}

pub enum TokenState {
    Valid,
    Expired,
    Unknown,
}

impl TokenStore {
    pub fn issue(&mut self, lifetime_secs: u64) -> String {
        let now = time::now_ms();
        self.tokens.retain(|_, exp| *exp > now);
        let mut bytes = [0u8; 48];
        rand::rng().fill_bytes(&mut bytes);
        let token = format!("gsim.{}", URL_SAFE_NO_PAD.encode(bytes));
        self.tokens.insert(token.clone(), now.saturating_add(lifetime_secs.saturating_mul(1000)));
        self.issued += 1;
        token
    }

    pub fn state(&self, token: &str) -> TokenState {
        match self.tokens.get(token) {
            Some(&exp) if exp > time::now_ms() => TokenState::Valid,
            Some(_) => TokenState::Expired,
            None => TokenState::Unknown,
        }
    }

    pub fn issued(&self) -> u64 {
        self.issued
    }
}

/// An Entra token-endpoint error.
struct AadError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
}

fn aad(status: StatusCode, error: &'static str, code: u32, description: impl Into<String>) -> AadError {
    AadError { status, error, code, description: description.into() }
}

fn missing(param: &str) -> AadError {
    aad(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900_144,
        format!("The request body must contain the following parameter: '{param}'."),
    )
}

impl AadError {
    fn into_response(self, ids: &RequestIds) -> Response {
        let now = time::now_ms();
        let ts = time::aad_timestamp(now);
        let trace_id = uuid::Uuid::new_v4().to_string();
        let correlation_id = uuid::Uuid::parse_str(&ids.client_request_id)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| ids.request_id.clone());
        let body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {ts}",
                self.code, self.description
            ),
            "error_codes": [self.code],
            "timestamp": ts,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        let mut resp = json_response(self.status, &body, AAD_JSON);
        no_store(resp.headers_mut());
        resp
    }
}

fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Compares secrets without an early exit on the first differing byte.
fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Client id and secret from `Authorization: Basic`. RFC 6749 §2.3.1 form-urlencodes
/// both before base64, but many clients skip that, so the secret is returned both
/// decoded and as sent.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, [String; 2])>, AadError> {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let invalid = || {
        aad(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_216,
            "The Authorization header holds malformed Basic client credentials.",
        )
    };
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| invalid())?;
    let text = String::from_utf8(decoded).map_err(|_| invalid())?;
    let (id, secret) = text.split_once(':').ok_or_else(invalid)?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
    };
    Ok(Some((unescape(id), [unescape(secret), secret.to_owned()])))
}

fn check_scope(scope: &str, tenant: &str) -> Result<(), AadError> {
    if scope.split_whitespace().next().is_none() {
        return Err(missing("scope"));
    }
    for s in scope.split_whitespace() {
        let Some(resource) = s.strip_suffix("/.default") else {
            return Err(aad(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1_002_012,
                format!(
                    "The provided value for scope {s} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                ),
            ));
        };
        if !GRAPH_RESOURCES.iter().any(|r| r.eq_ignore_ascii_case(resource.trim_end_matches('/'))) {
            return Err(aad(
                StatusCode::BAD_REQUEST,
                "invalid_resource",
                500_011,
                format!(
                    "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
                ),
            ));
        }
    }
    Ok(())
}

fn issue(app: &App, form: &HashMap<String, String>, headers: &HeaderMap, tenant: &str) -> Result<Value, AadError> {
    let cfg = &app.config;
    if !tenant.eq_ignore_ascii_case(&cfg.tenant_id) {
        return Err(aad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90_002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        ));
    }
    let grant = form.get("grant_type").ok_or_else(|| missing("grant_type"))?;
    if grant != "client_credentials" {
        return Err(aad(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70_003,
            format!("The app requested an unsupported grant type '{grant}'."),
        ));
    }
    let basic = basic_credentials(headers)?;
    let client_id = match (&basic, form.get("client_id")) {
        (Some((b, _)), Some(f)) if b != f => {
            return Err(aad(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900_023,
                "The client_id in the request body differs from the one in the Authorization header.",
            ));
        }
        (Some((b, _)), _) => b.clone(),
        (None, Some(f)) => f.clone(),
        (None, None) => return Err(missing("client_id")),
    };
    if !client_id.eq_ignore_ascii_case(&cfg.client_id) {
        return Err(aad(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700_016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                cfg.tenant_id
            ),
        ));
    }
    check_scope(form.get("scope").map_or("", String::as_str), tenant)?;
    let secret = basic.map(|(_, s)| s).or_else(|| form.get("client_secret").map(|s| [s.clone(), s.clone()]));
    let assertion_type = form.get("client_assertion_type");
    match (secret, assertion_type) {
        (Some(_), Some(_)) => Err(aad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90_015,
            "Only one client credential may be presented: client_secret or client_assertion.",
        )),
        (None, Some(t)) if t != JWT_BEARER => Err(aad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90_014,
            format!("client_assertion_type must be '{JWT_BEARER}'."),
        )),
        (None, Some(_)) if !form.contains_key("client_assertion") => Err(missing("client_assertion")),
        (None, Some(_)) => {
            let jwt = form.get("client_assertion").map_or("", String::as_str);
            let audiences = token_audiences(app, headers, tenant);
            let certificates = lock(&app.certificates).clone();
            let now = time::now_ms() / 1000;
            match assertion::validate(jwt, &client_id, &audiences, &certificates, now) {
                Ok(()) => Ok(issue_token(app)),
                Err(refusal) if refusal.malformed => {
                    Err(aad(StatusCode::BAD_REQUEST, "invalid_request", refusal.code, refusal.description))
                }
                Err(refusal) => Err(aad(StatusCode::UNAUTHORIZED, "invalid_client", refusal.code, refusal.description)),
            }
        }
        (None, None) => Err(aad(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_216,
            "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
        )),
        (Some(s), None) if !s.iter().any(|s| secrets_equal(s, &cfg.client_secret)) => Err(aad(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_215,
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
            ),
        )),
        (Some(_), None) => Ok(issue_token(app)),
    }
}

fn issue_token(app: &App) -> Value {
    let lifetime = app.settings().token_lifetime_secs;
    let token = lock(&app.tokens).issue(lifetime);
    json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    })
}

/// Audiences an assertion may name: this token endpoint as the client reached it
/// (or the public URL), and Entra's public-cloud endpoint for the same tenant.
fn token_audiences(app: &App, headers: &HeaderMap, tenant: &str) -> Vec<String> {
    let path = format!("/{tenant}/oauth2/v2.0/token");
    let mut audiences = vec![format!("https://login.microsoftonline.com{path}")];
    if let Some(public) = &app.config.public_url {
        audiences.push(format!("{}{path}", public.trim_end_matches('/')));
    }
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        audiences.push(format!("http://{host}{path}"));
    }
    audiences
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub async fn token_endpoint(
    State(app): State<Arc<App>>,
    Extension(ids): Extension<RequestIds>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(fault) = app.take_fault(Endpoint::Token)
        && let Some(resp) = token_fault(fault, &ids).await
    {
        return resp;
    }
    let mut form = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        form.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    match issue(&app, &form, &headers, &tenant) {
        Ok(body) => {
            tracing::info!(client_id = %app.config.client_id, "issued access token");
            let mut resp = json_response(StatusCode::OK, &body, AAD_JSON);
            no_store(resp.headers_mut());
            resp
        }
        Err(e) => {
            tracing::info!(error = e.error, code = e.code, "token request refused");
            e.into_response(&ids)
        }
    }
}

/// The response a fault turns a token request into; `None` after a delay.
async fn token_fault(fault: FaultKind, ids: &RequestIds) -> Option<Response> {
    let unavailable = |status, retry_after: Option<String>| {
        let mut resp =
            aad(status, "temporarily_unavailable", 90_006, "The server is temporarily unavailable. Retry the request.")
                .into_response(ids);
        if let Some(v) = retry_after.and_then(|r| HeaderValue::from_str(&r).ok()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    };
    Some(match fault {
        FaultKind::Delay { ms } => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            return None;
        }
        FaultKind::Throttle { retry_after } => unavailable(StatusCode::TOO_MANY_REQUESTS, retry_after),
        FaultKind::Unavailable { retry_after } => unavailable(StatusCode::SERVICE_UNAVAILABLE, retry_after),
        FaultKind::GatewayTimeout => unavailable(StatusCode::GATEWAY_TIMEOUT, None),
        FaultKind::Unauthorized => aad(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_222,
            "The provided client secret keys for the app are expired.",
        )
        .into_response(ids),
        FaultKind::Malformed => {
            (StatusCode::OK, [(header::CONTENT_TYPE, AAD_JSON)], "{\"token_type\":\"Bearer\",\"expires_in\":35")
                .into_response()
        }
        // Never chosen for the token endpoint (see FaultKind::applies_to).
        FaultKind::Reset
        | FaultKind::SyncStateNotFound { .. }
        | FaultKind::ResyncRequired { .. }
        | FaultKind::Duplicate
        | FaultKind::NextLinkLoop => {
            return None;
        }
    })
}

/// 401 as Graph sends it, with the `WWW-Authenticate` challenge.
pub fn unauthorized(message: &str, ids: &RequestIds) -> Response {
    let mut resp =
        ApiError::new(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", message).into_graph_response(ids);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
        ),
    );
    resp
}

/// Checks `Authorization: Bearer …` against issued, unexpired tokens; the error is
/// the message of the 401 to send.
pub fn check_bearer(app: &App, headers: &HeaderMap) -> Result<(), &'static str> {
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let token = match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => "",
    };
    if token.is_empty() {
        return Err("Access token is empty.");
    }
    match lock(&app.tokens).state(token) {
        TokenState::Valid => Ok(()),
        TokenState::Expired => Err("Lifetime validation failed, the token is expired."),
        TokenState::Unknown => Err("Access token validation failure. Invalid audience."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert!(check_scope("https://graph.microsoft.com/.default", "t").is_ok());
        assert!(check_scope("00000003-0000-0000-c000-000000000000/.default", "t").is_ok());
        assert_eq!(check_scope("https://graph.microsoft.com/User.Read", "t").err().map(|e| e.code), Some(1_002_012));
        assert_eq!(check_scope("https://example.com/.default", "t").err().map(|e| e.code), Some(500_011));
        assert_eq!(check_scope(" ", "t").err().map(|e| e.code), Some(900_144));
    }

    #[test]
    fn basic_header_is_url_decoded() {
        let mut h = HeaderMap::new();
        let creds = STANDARD.encode("my%20app:s%3Acret");
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {creds}")).unwrap());
        let (id, secret) = basic_credentials(&h).ok().flatten().unwrap();
        assert_eq!(id, "my app");
        assert_eq!(secret, ["s:cret".to_owned(), "s%3Acret".to_owned()]);
    }

    #[test]
    fn constant_time_compare() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
