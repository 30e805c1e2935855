//! `graph-sim`: a Microsoft Graph simulator for Group Writeback's tests, benchmarks,
//! demo and users' staging tests.
//!
//! It serves the OAuth 2.0 client-credentials token endpoint, `groups/delta` and
//! `users/delta` (v1.0 and beta) with Graph's documented delta semantics, paging and
//! failure modes, and an admin API (`/admin/…`, see the crate README) that changes
//! the tenant and injects faults. [`AdminClient`] is a typed client for that API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let sim = graph_sim::start(graph_sim::SimConfig::default()).await?;
//! let admin = sim.admin()?;
//! admin.create_group(&graph_sim::NewGroup::default()).await?;
//! // point a Graph client at sim.base_url() …
//! sim.stop().await?;
//! # Ok(()) }
//! ```

mod admin;
mod app;
mod assertion;
mod auth;
mod client;
mod config;
mod delta;
mod errors;
mod faults;
mod graph;
mod http;
mod model;
mod objects;
mod schema;
mod stats;
mod store;
mod subscriptions;
mod time;
mod tokens;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use assertion::RegisteredCertificate;
pub use client::{AdminClient, AdminError};
pub use config::{PagingConfig, RemovedReason, Settings, SettingsPatch, SimConfig};
pub use faults::{ErrorVariant, FaultKind, FaultMatch, FaultRule};
pub use model::{
    Committed, DeltaRequestCount, GenerateResult, GenerateSpec, GeneratedGroupKind, GroupFields, GroupMutation,
    GroupView, IdList, MemberRef, MembersMutation, NewDirectoryObject, NewGroup, NewUser, ObjectCounts, ObjectKind,
    ObjectMutation, ObjectState, RequestCount, Seed, SeedResult, Stats, UserFields, UserMutation, UserView,
    WritebackConfiguration,
};
pub use subscriptions::SubscriptionView;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid graph-sim configuration: {0}")]
    Config(String),
    #[error("the seed was refused: {0}")]
    Seed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn validate(config: &SimConfig) -> Result<(), ServeError> {
    for (name, value) in
        [("tenant id", &config.tenant_id), ("client id", &config.client_id), ("client secret", &config.client_secret)]
    {
        if value.trim().is_empty() {
            return Err(ServeError::Config(format!("the {name} is empty")));
        }
    }
    if let Some(url) = &config.public_url {
        let parsed = url::Url::parse(url).map_err(|e| ServeError::Config(format!("public URL '{url}': {e}")))?;
        if parsed.path() != "/" || parsed.query().is_some() {
            return Err(ServeError::Config(format!("public URL '{url}' must be scheme://host[:port] without a path")));
        }
    }
    config::Settings::from_config(config).validate().map_err(ServeError::Config)
}

type Built = (Arc<app::App>, tokio::sync::mpsc::UnboundedReceiver<Vec<subscriptions::Notice>>);

fn build(config: SimConfig) -> Result<Built, ServeError> {
    validate(&config)?;
    let certificates = config
        .client_certificates
        .iter()
        .map(|pem| assertion::RegisteredCertificate::from_pem(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Config(format!("client certificate: {e}")))?;
    client::ensure_crypto_provider();
    let http = reqwest::Client::builder()
        .user_agent("graph-sim-notifications")
        .build()
        .map_err(|e| ServeError::Config(format!("notification HTTP client: {e}")))?;
    let (notices, notices_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tenant = store::Tenant::new();
    if let Some(seed) = &config.seed {
        let value = serde_json::to_value(seed).map_err(|e| ServeError::Seed(e.to_string()))?;
        let r = tenant.seed(&value).map_err(|e| ServeError::Seed(e.message))?;
        tracing::info!(
            users = r.user_ids.len(),
            groups = r.group_ids.len(),
            memberships = r.memberships,
            "seed loaded"
        );
    }
    let app = Arc::new(app::App::new(config, tenant, certificates, notices, http));
    Ok((app, notices_rx))
}

async fn run(
    listener: TcpListener,
    (app, notices): Built,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let deliverer = tokio::spawn(subscriptions::deliver(app.clone(), notices));
    let served = axum::serve(listener, http::router(app)).with_graceful_shutdown(shutdown).await;
    deliverer.abort();
    served?;
    Ok(())
}

/// Serves the simulator on `listener` until `shutdown` completes, then finishes the
/// requests in flight. The tenant starts empty, or with `config.seed`.
pub async fn serve(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run(listener, build(config)?, shutdown).await
}

/// A simulator running in the current process (for tests and the demo).
pub struct RunningSim {
    base_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

/// Binds `127.0.0.1:0` and serves `config` in a background task.
pub async fn start(config: SimConfig) -> Result<RunningSim, ServeError> {
    let built = build(config)?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, built, async move {
        // A dropped sender also stops the server.
        let _ = rx.await;
    }));
    Ok(RunningSim { base_url: format!("http://{addr}"), shutdown: Some(tx), task })
}

impl RunningSim {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn admin(&self) -> Result<AdminClient, AdminError> {
        AdminClient::new(self.base_url.clone())
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Io(std::io::Error::other(e))),
        }
    }
}
