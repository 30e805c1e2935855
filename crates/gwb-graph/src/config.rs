use std::path::PathBuf;

use gwb_runtime::secret::read_secret_file;
use serde::Deserialize;

use crate::GraphError;
use crate::credential::{CertificateCredential, Credential};

/// `[graph]` section of the collector's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// Login authority; national clouds use their own (e.g. `https://login.microsoftonline.us`).
    #[serde(default = "default_login")]
    pub login_endpoint: String,
    /// Graph root; e.g. `https://graph.microsoft.us`, or graph-sim's address.
    #[serde(default = "default_graph")]
    pub graph_endpoint: String,
    pub tenant_id: String,
    pub client_id: String,
    /// File holding the client secret (mode 0600). Set this, or the certificate pair.
    pub client_secret_file: Option<PathBuf>,
    /// PEM certificate registered on the app registration (certificate credential).
    pub client_certificate_file: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8 or PKCS#1 RSA, mode 0600).
    pub client_private_key_file: Option<PathBuf>,
    /// OAuth scope; defaults to `<graph_endpoint>/.default`. Set it when Graph is
    /// reached through another address (graph-sim, a proxy) than its resource URI.
    pub scope: Option<String>,
    /// `v1.0`, or `beta` to read the groups' `writebackConfiguration`.
    #[serde(default = "default_version")]
    pub api_version: String,
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
    /// Retries of one request on 429/503/504/network errors before the round fails.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Ceiling on the backoff between retries when Graph sends no `Retry-After`.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_seconds: u64,
    /// Graph's directory-read budget for this app in this tenant, in resource units per
    /// 10 s: 3,500 (under 50 users, the default), 5,000 (50–500) or 8,000 (more). The
    /// collector paces its requests under it; 0 turns pacing off.
    #[serde(default = "default_resource_units")]
    pub resource_units_per_10s: u32,
}

fn default_login() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_graph() -> String {
    "https://graph.microsoft.com".into()
}
fn default_version() -> String {
    "v1.0".into()
}
fn default_request_timeout() -> u64 {
    60
}
fn default_max_retries() -> u32 {
    8
}
fn default_max_backoff() -> u64 {
    60
}
fn default_resource_units() -> u32 {
    3_500
}

impl GraphConfig {
    /// Reads the one configured credential: a client secret, or a certificate and its
    /// private key. Both or neither is a configuration error naming the keys.
    pub fn load_credential(&self) -> Result<Credential, GraphError> {
        match (&self.client_secret_file, &self.client_certificate_file, &self.client_private_key_file) {
            (Some(secret), None, None) => read_secret_file("graph.client_secret_file", secret)
                .map(Credential::Secret)
                .map_err(|e| GraphError::Config(e.to_string())),
            (None, Some(certificate), Some(key)) => {
                CertificateCredential::load(certificate, key).map(|c| Credential::Certificate(Box::new(c)))
            }
            (None, Some(_), None) | (None, None, Some(_)) => Err(GraphError::Config(
                "graph.client_certificate_file and graph.client_private_key_file must be set together".into(),
            )),
            (None, None, None) | (Some(_), _, _) => Err(GraphError::Config(
                "set exactly one credential: graph.client_secret_file, or graph.client_certificate_file with graph.client_private_key_file".into(),
            )),
        }
    }

    pub fn is_beta(&self) -> bool {
        self.api_version.eq_ignore_ascii_case("beta")
    }

    /// The token endpoint; also the `aud` of certificate assertions.
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.login_endpoint.trim_end_matches('/'), self.tenant_id)
    }

    pub(crate) fn scope(&self) -> String {
        self.scope.clone().unwrap_or_else(|| format!("{}/.default", self.graph_endpoint.trim_end_matches('/')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: bool, certificate: bool, key: bool) -> GraphConfig {
        GraphConfig {
            login_endpoint: default_login(),
            graph_endpoint: default_graph(),
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret_file: secret.then(|| PathBuf::from("/nonexistent/secret")),
            client_certificate_file: certificate.then(|| PathBuf::from("/nonexistent/cert.pem")),
            client_private_key_file: key.then(|| PathBuf::from("/nonexistent/key.pem")),
            scope: None,
            api_version: default_version(),
            request_timeout_seconds: 1,
            max_retries: 0,
            max_backoff_seconds: 1,
            resource_units_per_10s: default_resource_units(),
        }
    }

    #[test]
    fn exactly_one_credential_and_errors_name_the_keys() {
        for (secret, certificate, key) in [(false, false, false), (true, true, true), (true, true, false)] {
            let error = config(secret, certificate, key).load_credential().unwrap_err().to_string();
            assert!(
                error.contains("graph.client_secret_file") && error.contains("graph.client_certificate_file"),
                "{error}"
            );
        }
        let error = config(false, true, false).load_credential().unwrap_err().to_string();
        assert!(error.contains("graph.client_private_key_file"), "{error}");
        let error = config(false, false, true).load_credential().unwrap_err().to_string();
        assert!(error.contains("graph.client_certificate_file"), "{error}");
        let error = config(false, true, true).load_credential().unwrap_err().to_string();
        assert!(error.contains("graph.client_certificate_file"), "{error}");
    }
}
