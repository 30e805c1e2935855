//! The collector's internal gRPC service (`gwb.control.v1.Collector`), called by the
//! planner: SyncNow, FullResync and status.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use gwb_proto::control::v1 as pb;
use gwb_proto::control::v1::collector_server::{Collector, CollectorServer};
use gwb_runtime::secret::Secret;
use gwb_runtime::shutdown::Shutdown;

use crate::{CollectorError, Shared};

struct CollectorService {
    shared: Shared,
}

#[tonic::async_trait]
impl Collector for CollectorService {
    async fn sync_now(&self, _request: Request<pb::SyncNowRequest>) -> Result<Response<pb::SyncNowResponse>, Status> {
        let started = !self.shared.running.load(Ordering::SeqCst);
        self.shared.wake.notify_one();
        tracing::info!(started, "SyncNow requested");
        Ok(Response::new(pb::SyncNowResponse { started }))
    }

    async fn full_resync(
        &self,
        _request: Request<pb::FullResyncRequest>,
    ) -> Result<Response<pb::SyncNowResponse>, Status> {
        self.shared.full_resync.store(true, Ordering::SeqCst);
        let started = !self.shared.running.load(Ordering::SeqCst);
        self.shared.wake.notify_one();
        tracing::info!(started, "FullResync requested");
        Ok(Response::new(pb::SyncNowResponse { started }))
    }

    async fn get_collector_status(
        &self,
        _request: Request<pb::GetCollectorStatusRequest>,
    ) -> Result<Response<pb::CollectorStatus>, Status> {
        let status = self.shared.status().clone();
        Ok(Response::new(pb::CollectorStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            users_round_completed_ms: status.users_round_completed_ms,
            groups_round_completed_ms: status.groups_round_completed_ms,
            last_error: status.last_error,
            rounds_completed: status.rounds_completed,
            rounds_failed: status.rounds_failed,
            notifications_active: status.notifications_active,
        }))
    }
}

/// Bearer-token check shared by every call.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<Arc<Secret>>,
}

impl TokenCheck {
    pub fn new(expected: Option<Secret>) -> Self {
        TokenCheck { expected: expected.map(Arc::new) }
    }

    fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(request) };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing `authorization: Bearer <token>` (collector.control.token_file)")
            })?;
        if constant_time_eq(presented.as_bytes(), expected.expose().as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("the control token is not valid"))
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (index, byte) in a.iter().enumerate() {
        diff |= usize::from(byte ^ b.get(index % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Shared,
    token: TokenCheck,
    shutdown: Shutdown,
) -> Result<(), CollectorError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<CollectorServer<CollectorService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gwb_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CollectorError::Control(e.to_string()))?;
    let service = CollectorServer::with_interceptor(CollectorService { shared }, move |request| token.check(request));
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            shutdown.triggered().await
        })
        .await
        .map_err(|e| CollectorError::Control(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_matches_only_equal() {
        use super::constant_time_eq as eq;
        assert!(eq(b"token", b"token"));
        assert!(!eq(b"token", b"tokeN"));
        assert!(!eq(b"token", b"token2"));
        assert!(!eq(b"", b"x"));
    }
}
