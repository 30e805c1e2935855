//! What every gwb gRPC server shares: the `[<service>.control]` settings, the bearer
//! token rule (required off loopback), and one way to serve a control service with
//! `grpc.health.v1` and server reflection on an injected listener until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use tokio::net::TcpListener;
use tonic::transport::server::Router;
use tonic_health::pb::health_server::{Health, HealthServer};

use gwb_runtime::secret::{self, Secret};
use gwb_runtime::shutdown::Shutdown;

pub use crate::auth::TokenCheck;

/// `[<service>.control]`: where the service's control API listens and the token it
/// requires. The same two keys in the planner, the collector and the writer.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlSettings {
    /// `ip:port`; port 0 binds any free port and reports it (see `gwb_runtime::listen`).
    /// Unset: the service's default.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Bearer token (mode 0600); required unless listening on loopback.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error("control API: {0}")]
    Serve(String),
}

impl ControlSettings {
    pub fn listen_or(&self, default: SocketAddr) -> SocketAddr {
        self.listen.unwrap_or(default)
    }

    /// Reads the token file. Without one, only a loopback listener is allowed (with a
    /// warning); `section` names the settings in messages (`writer.control`).
    pub fn load_token(&self, section: &str, default: SocketAddr) -> Result<Option<Secret>, ServerError> {
        let listen = self.listen_or(default);
        match &self.token_file {
            Some(path) => secret::read_secret_file(&format!("{section}.token_file"), path)
                .map(Some)
                .map_err(|e| ServerError::Config(e.to_string())),
            None if listen.ip().is_loopback() => {
                tracing::warn!(%listen, "{section}.token_file is not set: the control API accepts unauthenticated calls on loopback");
                Ok(None)
            }
            None => Err(ServerError::Config(format!(
                "{section}.token_file is required when {section}.listen ({listen}) is not a loopback address"
            ))),
        }
    }
}

/// The token check for a loaded token.
pub fn token_check(token: Option<&Secret>) -> TokenCheck {
    TokenCheck::new(token.map(|t| t.expose().to_string()))
}

/// A router with `grpc.health.v1` (reporting `S` as serving) and server reflection;
/// the caller adds its own service with the token check and passes it to [`serve`].
pub async fn router<S: tonic::server::NamedService>() -> Result<Router, ServerError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<S>().await;
    router_with_health(health)
}

/// The same with a health service the caller drives (the writer reports serving only
/// while its directory answers).
pub fn router_with_health<H: Health>(health: HealthServer<H>) -> Result<Router, ServerError> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Serve(e.to_string()))?;
    Ok(tonic::transport::Server::builder().add_service(health).add_service(reflection))
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(router: Router, listener: TcpListener, shutdown: Shutdown) -> Result<(), ServerError> {
    router
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            shutdown.triggered().await
        })
        .await
        .map_err(|e| ServerError::Serve(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_required_off_loopback_only() {
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!());
        let open: SocketAddr = "0.0.0.0:50051".parse().unwrap_or_else(|_| unreachable!());
        assert!(matches!(ControlSettings::default().load_token("writer.control", loopback), Ok(None)));
        let error = ControlSettings::default().load_token("writer.control", open).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("writer.control.token_file is required")));
    }
}
