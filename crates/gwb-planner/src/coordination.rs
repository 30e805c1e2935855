//! The planner's side of coordination: it drives the collector (sync now, full resync)
//! and the writers (pause, resume) over their gRPC services.

use std::time::Duration;

use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use gwb_proto::control::v1 as pb;
use gwb_runtime::secret::Secret;

#[derive(Clone)]
pub struct Coordinator {
    collector: Option<String>,
    writers: Vec<String>,
    token: Option<Secret>,
}

impl Coordinator {
    pub fn new(collector: Option<String>, writers: Vec<String>, token: Option<Secret>) -> Self {
        Coordinator { collector, writers, token }
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
            let value: MetadataValue<_> = format!("Bearer {}", token.expose())
                .parse()
                .map_err(|_| Status::failed_precondition("coordination token holds characters not allowed in a header"))?;
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

    /// Pauses (`Some(reason)`) or resumes (`None`) every configured writer. Fails if
    /// any writer could not be reached, after trying them all.
    pub async fn pause_writers(&self, pause: Option<String>) -> Result<pb::CoordinationResponse, Status> {
        if self.writers.is_empty() {
            return Err(Status::failed_precondition("the planner does not know the writers: set coordination.writer_endpoints"));
        }
        let mut results = Vec::new();
        let mut failures = Vec::new();
        for endpoint in &self.writers {
            let outcome = async {
                let mut client = pb::writer_client::WriterClient::new(Self::channel(endpoint).await?);
                let state = match &pause {
                    Some(reason) => client.pause(self.authorize(tonic::Request::new(pb::PauseRequest { reason: reason.clone() }))?).await?,
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
            Err(Status::unavailable(format!("not every writer was reached ({}); reached: {}", failures.join("; "), results.join("; "))))
        }
    }
}
