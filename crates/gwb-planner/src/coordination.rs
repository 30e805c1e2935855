//! The planner's side of coordination: it drives the collector (sync now, full resync)
//! and the writers (pause, resume) over their gRPC services.

use std::time::Duration;

use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use gwb_proto::control::v1 as pb;
use gwb_runtime::clock::Clock;
use gwb_runtime::secret::Secret;

#[derive(Clone)]
pub struct Coordinator {
    collector: Option<String>,
    writers: Vec<String>,
    token: Option<Secret>,
    clock: Clock,
}

impl Coordinator {
    pub fn new(collector: Option<String>, writers: Vec<String>, token: Option<Secret>, clock: Clock) -> Self {
        Coordinator { collector, writers, token, clock }
    }

    async fn channel(endpoint: &str) -> Result<Channel, Status> {
        Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| Status::failed_precondition(format!("invalid endpoint {endpoint}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach {endpoint}: {e}")))
    }

    fn authorize<T>(&self, mut request: tonic::Request<T>) -> Result<tonic::Request<T>, Status> {
        if let Some(token) = &self.token {
            let value: MetadataValue<_> = format!("Bearer {}", token.expose()).parse().map_err(|_| {
                Status::failed_precondition("coordination token holds characters not allowed in a header")
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    pub async fn sync_now(&self, full: bool) -> Result<pb::CoordinationResponse, Status> {
        let endpoint = self.collector.as_deref().ok_or_else(|| {
            Status::failed_precondition("the planner does not know the collector: set coordination.collector_endpoint")
        })?;
        let mut client = pb::collector_client::CollectorClient::new(Self::channel(endpoint).await?);
        let response = if full {
            client.full_resync(self.authorize(tonic::Request::new(pb::FullResyncRequest {}))?).await?
        } else {
            client.sync_now(self.authorize(tonic::Request::new(pb::SyncNowRequest {}))?).await?
        };
        let what = if full { "full resync" } else { "delta round" };
        let line = if response.get_ref().started {
            format!("gwb-collector {endpoint}: {what} started")
        } else {
            format!("gwb-collector {endpoint}: a round is running; the {what} follows it")
        };
        Ok(pb::CoordinationResponse { results: vec![line] })
    }

    /// Asks the collector and every writer for their state over gRPC (2 s each), so
    /// `GetStatus` shows what they say now, not only what they last published.
    pub async fn live_health(&self) -> Vec<pb::ServiceHealth> {
        let now = self.clock.now_ms();
        let mut services = Vec::new();
        if let Some(endpoint) = &self.collector {
            let answer = tokio::time::timeout(Duration::from_secs(2), async {
                let mut client = pb::collector_client::CollectorClient::new(Self::channel(endpoint).await?);
                Ok::<_, Status>(
                    client
                        .get_collector_status(self.authorize(tonic::Request::new(pb::GetCollectorStatusRequest {}))?)
                        .await?
                        .into_inner(),
                )
            })
            .await;
            services.push(match answer {
                Ok(Ok(state)) => pb::ServiceHealth {
                    service: format!("gwb-collector@{endpoint}"),
                    healthy: state.last_error.is_empty(),
                    version: state.version,
                    detail: {
                        let rounds = if state.last_error.is_empty() {
                            format!("{} rounds completed, {} failed", state.rounds_completed, state.rounds_failed)
                        } else {
                            format!("last round failed: {}", state.last_error)
                        };
                        let mut detail = rounds;
                        if !state.graph_budget.is_empty() {
                            detail.push_str(&format!("; Graph budget: {}", state.graph_budget));
                        }
                        if !state.writeback_configuration.is_empty() {
                            detail.push_str(&format!("; writebackConfiguration: {}", state.writeback_configuration));
                        }
                        detail
                    },
                    last_seen_ms: now,
                },
                Ok(Err(status)) => unreachable(format!("gwb-collector@{endpoint}"), status.message()),
                Err(_) => unreachable(format!("gwb-collector@{endpoint}"), "no answer within 2 s"),
            });
        }
        for endpoint in &self.writers {
            let answer = tokio::time::timeout(Duration::from_secs(2), async {
                let mut client = pb::writer_client::WriterClient::new(Self::channel(endpoint).await?);
                Ok::<_, Status>(
                    client
                        .get_writer_state(self.authorize(tonic::Request::new(pb::GetWriterStateRequest {}))?)
                        .await?
                        .into_inner(),
                )
            })
            .await;
            services.push(match answer {
                Ok(Ok(state)) => pb::ServiceHealth {
                    service: format!("gwb-writer@{endpoint}"),
                    healthy: state.directory_connected,
                    version: state.version,
                    detail: if state.paused {
                        format!("paused: {}; {}", state.pause_reason, state.detail)
                    } else {
                        state.detail
                    },
                    last_seen_ms: now,
                },
                Ok(Err(status)) => unreachable(format!("gwb-writer@{endpoint}"), status.message()),
                Err(_) => unreachable(format!("gwb-writer@{endpoint}"), "no answer within 2 s"),
            });
        }
        services
    }

    /// Pauses (`Some(reason)`) or resumes (`None`) every configured writer. Fails if
    /// any writer could not be reached, after trying them all.
    pub async fn pause_writers(&self, pause: Option<String>) -> Result<pb::CoordinationResponse, Status> {
        if self.writers.is_empty() {
            return Err(Status::failed_precondition(
                "the planner does not know the writers: set coordination.writer_endpoints",
            ));
        }
        let mut results = Vec::new();
        let mut failures = Vec::new();
        for endpoint in &self.writers {
            let outcome = async {
                let mut client = pb::writer_client::WriterClient::new(Self::channel(endpoint).await?);
                let state = match &pause {
                    Some(reason) => {
                        client
                            .pause(self.authorize(tonic::Request::new(pb::PauseRequest { reason: reason.clone() }))?)
                            .await?
                    }
                    None => client.resume(self.authorize(tonic::Request::new(pb::ResumeRequest {}))?).await?,
                };
                Ok::<_, Status>(state.into_inner())
            }
            .await;
            match outcome {
                Ok(state) => results.push(format!(
                    "gwb-writer {}: {}",
                    state.writer_id,
                    if state.paused { "paused" } else { "running" }
                )),
                Err(status) => failures.push(format!("{endpoint}: {}", status.message())),
            }
        }
        if failures.is_empty() {
            Ok(pb::CoordinationResponse { results })
        } else {
            Err(Status::unavailable(format!(
                "not every writer was reached ({}); reached: {}",
                failures.join("; "),
                results.join("; ")
            )))
        }
    }
}

fn unreachable(service: String, why: &str) -> pb::ServiceHealth {
    pb::ServiceHealth {
        service,
        healthy: false,
        version: String::new(),
        detail: format!("unreachable: {why}"),
        last_seen_ms: 0,
    }
}
