//! The collector's internal gRPC service (`gwb.control.v1.Collector`), called by the
//! planner: SyncNow, FullResync and status.

use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use gwb_proto::control::v1 as pb;
use gwb_proto::control::v1::collector_server::{Collector, CollectorServer};
use gwb_proto::server::{self, TokenCheck};
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
            writeback_configuration: status.writeback_source,
            graph_budget: status.graph_budget,
        }))
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Shared,
    token: TokenCheck,
    shutdown: Shutdown,
) -> Result<(), CollectorError> {
    let service = CollectorServer::with_interceptor(CollectorService { shared }, move |request| token.check(request));
    let router = server::router::<CollectorServer<CollectorService>>()
        .await
        .map_err(|e| CollectorError::Control(e.to_string()))?
        .add_service(service);
    server::serve(router, listener, shutdown).await.map_err(|e| CollectorError::Control(e.to_string()))
}
