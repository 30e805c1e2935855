//! Client-credential access tokens, cached and renewed before they expire.

use std::time::{Duration, Instant, SystemTime};

use gwb_runtime::secret::Secret;
use serde::Deserialize;

use crate::GraphError;
use crate::credential::Credential;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Clone)]
pub(crate) struct AccessToken {
    pub value: Secret,
    pub expires_at: Instant,
}

impl AccessToken {
    /// Renew when less than 10 % of the lifetime (at least 60 s) is left, so a round
    /// never starts with a token about to expire.
    pub fn is_fresh(&self, now: Instant, lifetime: Duration) -> bool {
        let margin = (lifetime / 10).max(Duration::from_secs(60)).min(lifetime / 2);
        now + margin < self.expires_at
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Why a token request did not give a token.
#[derive(Debug)]
pub(crate) enum TokenFailure {
    /// Throttled (429), unavailable (5xx, a transport fault) or, as RFC 6749 allows,
    /// 400 `temporarily_unavailable`: try again, after `wait` when Entra said so.
    Retry { last: String, wait: Option<Duration> },
    /// Refused credentials or a broken answer: retrying the same request will not help.
    Fatal(GraphError),
}

impl From<GraphError> for TokenFailure {
    fn from(error: GraphError) -> Self {
        TokenFailure::Fatal(error)
    }
}

pub(crate) async fn request_token(
    http: &reqwest::Client,
    token_url: &str,
    client_id: &str,
    credential: &Credential,
    scope: &str,
    now: Instant,
    wall_clock: SystemTime,
) -> Result<(AccessToken, Duration), TokenFailure> {
    // A certificate signs a fresh assertion per request: an assertion expires within
    // minutes, and each carries its own `jti`.
    let assertion = match credential {
        Credential::Secret(_) => None,
        Credential::Certificate(certificate) => Some(certificate.assertion(client_id, token_url, wall_clock)?),
    };
    let mut form = vec![("grant_type", "client_credentials"), ("client_id", client_id), ("scope", scope)];
    match (credential, &assertion) {
        (_, Some(assertion)) => {
            form.push(("client_assertion_type", JWT_BEARER));
            form.push(("client_assertion", assertion.expose()));
        }
        (Credential::Secret(secret), None) => form.push(("client_secret", secret.expose())),
        (Credential::Certificate(_), None) => {}
    }
    let transport =
        |e: reqwest::Error| TokenFailure::Retry { last: format!("token endpoint: {}", without_url(&e)), wait: None };
    let response = http.post(token_url).form(&form).send().await.map_err(transport)?;
    let status = response.status();
    let wait = crate::client::retry_after(response.headers(), wall_clock);
    let body = response.bytes().await.map_err(transport)?;
    if status.is_success() {
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| GraphError::Malformed { url: token_url.to_string(), reason: e.to_string() })?;
        let lifetime = Duration::from_secs(parsed.expires_in.max(1));
        let token = AccessToken { value: Secret::new(parsed.access_token), expires_at: now + lifetime };
        return Ok((token, lifetime));
    }
    let error = serde_json::from_slice::<TokenError>(&body).ok();
    let temporarily = error.as_ref().is_some_and(|e| e.error.eq_ignore_ascii_case("temporarily_unavailable"));
    if status.is_server_error() || status.as_u16() == 429 || temporarily {
        return Err(TokenFailure::Retry { last: format!("token endpoint answered {status}"), wait });
    }
    let detail = error
        .map(|e| format!("{}: {}", e.error, first_line(&e.error_description)))
        .unwrap_or_else(|| format!("HTTP {status}"));
    Err(TokenFailure::Fatal(GraphError::Unauthorized(format!("token endpoint refused client {client_id}: {detail}"))))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// A short, secret-free description of a transport error (URLs carry no secrets here:
/// credentials travel in form bodies and headers only).
pub(crate) fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{kind}: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewed_before_expiry() {
        let now = Instant::now();
        let lifetime = Duration::from_secs(3600);
        let token = AccessToken { value: Secret::new("t"), expires_at: now + lifetime };
        assert!(token.is_fresh(now, lifetime));
        assert!(token.is_fresh(now + Duration::from_secs(3000), lifetime));
        assert!(!token.is_fresh(now + Duration::from_secs(3300), lifetime));
        let short = Duration::from_secs(10);
        let token = AccessToken { value: Secret::new("t"), expires_at: now + short };
        assert!(token.is_fresh(now, short));
        assert!(!token.is_fresh(now + Duration::from_secs(6), short));
    }
}
