//! The writer's gRPC service (`gwb.control.v1.Writer`): the planner pauses and resumes
//! command application and reads the directory's state.

use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use gwb_proto::control::v1 as pb;
use gwb_proto::server::{ServerError, TokenCheck};
use gwb_runtime::shutdown::Shutdown;
use pb::writer_server::Writer;

/// The served service; its gRPC health name is `WriterServer::NAME`.
pub type WriterServer = pb::writer_server::WriterServer<WriterService>;

/// Whether commands may be applied; `Some(reason)` while paused.
#[derive(Clone)]
pub struct PauseSwitch {
    sender: Arc<watch::Sender<Option<String>>>,
}

impl PauseSwitch {
    pub fn new() -> Self {
        PauseSwitch { sender: Arc::new(watch::channel(None).0) }
    }

    pub fn set(&self, reason: Option<String>) {
        self.sender.send_replace(reason);
    }

    pub fn reason(&self) -> Option<String> {
        self.sender.borrow().clone()
    }

    /// Resolves once not paused.
    pub async fn wait_until_running(&self) {
        let mut receiver = self.sender.subscribe();
        let _ = receiver.wait_for(Option::is_none).await;
    }
}

/// What the status reporter last learnt about the directory.
pub type DirectorySnapshot = Arc<Mutex<pb::WriterState>>;

pub struct WriterService {
    pub pause: PauseSwitch,
    pub snapshot: DirectorySnapshot,
}

impl WriterService {
    fn state(&self) -> pb::WriterState {
        let mut state = self.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
        let reason = self.pause.reason();
        state.paused = reason.is_some();
        state.pause_reason = reason.unwrap_or_default();
        state
    }
}

#[tonic::async_trait]
impl Writer for WriterService {
    async fn pause(&self, request: Request<pb::PauseRequest>) -> Result<Response<pb::WriterState>, Status> {
        let reason = request.into_inner().reason;
        let reason = if reason.trim().is_empty() { "paused by the operator".to_string() } else { reason };
        tracing::warn!(%reason, "writer paused: commands wait in RabbitMQ");
        self.pause.set(Some(reason));
        Ok(Response::new(self.state()))
    }

    async fn resume(&self, _request: Request<pb::ResumeRequest>) -> Result<Response<pb::WriterState>, Status> {
        tracing::info!("writer resumed");
        self.pause.set(None);
        Ok(Response::new(self.state()))
    }

    async fn get_writer_state(
        &self,
        _request: Request<pb::GetWriterStateRequest>,
    ) -> Result<Response<pb::WriterState>, Status> {
        Ok(Response::new(self.state()))
    }
}

/// Serves the Writer service (with the token check), `grpc.health.v1` and reflection
/// on `listener` until `shutdown`.
///
/// The health service is the caller's (`health`), not the one `gwb_proto::server::router`
/// makes: the Writer reports serving only while the directory answers, which the status
/// reporter sets through its `HealthReporter`, and `router` keeps its reporter to itself.
pub async fn serve(
    listener: TcpListener,
    service: WriterService,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    token: TokenCheck,
    shutdown: Shutdown,
) -> Result<(), ServerError> {
    let router = gwb_proto::server::router_with_health(health)?
        .add_service(WriterServer::with_interceptor(service, move |request| token.check(request)));
    gwb_proto::server::serve(router, listener, shutdown).await
}
