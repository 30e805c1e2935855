//! gwb-planner: consumes change events in order, keeps the desired state in its store,
//! decides what AD must look like and emits writer commands through a transactional
//! outbox; records the writer's outcomes; hosts the operator's gRPC control API.
//!
//! [`run`] is the whole service; the binary only parses its arguments, loads the
//! configuration and waits for a signal, so tests can run the planner in-process.

pub mod config;
mod consume;
mod control;
mod coordination;
mod outbox;
mod plan;
mod store;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use gwb_bus::Publisher;
use gwb_proto::control::v1::operator_server::OperatorServer;
use gwb_runtime::clock::Clock;
use gwb_runtime::secret;
use gwb_runtime::shutdown::Shutdown;

pub use config::{Config, ConfigError};

use plan::{Engine, Origin, Planned, PolicySettings};
use store::StoreError;
use store::sqlite::SqliteStore;

/// Listeners bound by the caller (tests bind port 0 and pass them in); `None` binds
/// the configured address.
#[derive(Default)]
pub struct Listeners {
    pub control: Option<TcpListener>,
}

/// Why the planner could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Secret(#[from] secret::SecretError),
    #[error("planner.state_path {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("RabbitMQ: {0}")]
    Bus(#[from] gwb_bus::BusError),
    #[error(transparent)]
    Listen(#[from] gwb_runtime::listen::ListenError),
    #[error(transparent)]
    Server(#[from] gwb_proto::server::ServerError),
    #[error("planner task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub(crate) type SharedEngine = Arc<Mutex<Engine<SqliteStore>>>;

/// The W3C trace context of `span` as the JSON object the outbox stores ("" when
/// there is none). A map of strings always serializes.
pub(crate) fn trace_of(span: &tracing::Span) -> String {
    let mut headers = std::collections::BTreeMap::new();
    gwb_runtime::telemetry::inject_span(span, &mut headers);
    if headers.is_empty() { String::new() } else { serde_json::to_string(&headers).unwrap_or_default() }
}

/// `now_ms` under the trace of `span`: commands planned then carry that trace.
pub(crate) fn origin(now_ms: i64, span: &tracing::Span) -> Origin {
    Origin { now_ms, trace: trace_of(span) }
}

/// Counts what a committed call planned (`gwb_commands_total{result="planned"}`).
pub(crate) fn count_planned(planned: &Planned) {
    if let Some(metrics) = gwb_runtime::metrics::global() {
        for (kind, _) in &planned.commands {
            metrics.command(kind.as_str(), "planned");
        }
        for kind in &planned.drift {
            metrics.drift_detected(kind.as_str());
        }
        if planned.drift_repaired > 0 {
            metrics.drift_repaired(planned.drift_repaired);
        }
    }
}

/// Runs the planner until `shutdown`: the events and outcomes consumers, the outbox
/// publisher and the control API.
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), PlannerError> {
    config.validate()?;
    let clock = Clock::system();
    let control = config.control()?;
    if control.is_deprecated() {
        tracing::warn!("[control] is deprecated: use [planner.control]");
    }
    let token = control.settings.load_token(control.name, config::DEFAULT_CONTROL_LISTEN)?;
    let db = SqliteStore::open(&config.planner.state_path)
        .map_err(|source| PlannerError::Store { path: config.planner.state_path.display().to_string(), source })?;
    let policy = PolicySettings {
        scope: config.scope(),
        placement: config.placement(),
        member_batch_size: config.planner.member_batch_size,
        on_leave_scope: config.planner.on_leave_scope,
        on_soft_delete: config.planner.on_soft_delete,
        on_user_soft_delete: config.planner.on_user_soft_delete,
        retired_ou: config.planner.retired_ou.clone(),
        partitions: config.bus.command_partitions.max(1),
        threshold: config.deletion.threshold(),
        member_removals: config.deletion.member_removal_threshold(),
        drift: config.drift.policy()?,
    };
    let coordination_token = match &config.coordination.token_file {
        Some(path) => Some(secret::read_secret_file("coordination.token_file", path)?),
        None => None,
    };
    let coordinator = coordination::Coordinator::new(
        config.coordination.collector_endpoint.clone(),
        config.coordination.writer_endpoints.clone(),
        coordination_token,
        clock.clone(),
    );
    let engine: SharedEngine = Arc::new(Mutex::new(Engine::new(db, policy)));
    let publisher = Publisher::connect(config.bus.clone()).await?;
    let listen_key = format!("{}.listen", control.name);
    let (listener, bound) = match listeners.control {
        Some(listener) => {
            let bound = gwb_runtime::listen::report("control", &listen_key, &listener)?;
            (listener, bound)
        }
        None => {
            let listener = gwb_runtime::listen::bind("control", &listen_key, control.listen()).await?;
            // `bind` reported the address already; this copy is for the log line only.
            let bound = listener.local_addr().unwrap_or_else(|_| control.listen());
            (listener, bound)
        }
    };
    let outbox_ready = Arc::new(Notify::new());

    let topology = publisher.topology().clone();
    // Up to 10 ms of linger: during a full round a batch then holds a page's worth of
    // events or more (one commit for all of them), and an incremental change waits at
    // most 10 ms longer.
    let (max_batch, linger) = (usize::from(config.bus.prefetch), Duration::from_millis(10));
    let consumer =
        consume::Consumer { engine: engine.clone(), outbox_ready: outbox_ready.clone(), clock: clock.clone() };
    let events = tokio::spawn(gwb_bus::consume_batches(
        config.bus.clone(),
        topology.events_queue(),
        shutdown.clone(),
        max_batch,
        linger,
        {
            let consumer = consumer.clone();
            move |deliveries| consumer.clone().events(deliveries)
        },
    ));
    let outcomes = tokio::spawn(gwb_bus::consume(config.bus.clone(), topology.outcomes_queue(), shutdown.clone(), {
        let consumer = consumer.clone();
        move |delivery| consumer.clone().outcome(delivery)
    }));
    let staging = config.planner.staging;
    if staging {
        tracing::warn!("staging mode: commands are planned and audited, never sent to the writer");
    }
    let outbox = tokio::spawn(outbox::publish(
        outbox::Outbox { engine: engine.clone(), publisher, ready: outbox_ready, staging, clock: clock.clone() },
        shutdown.clone(),
    ));
    let router = gwb_proto::server::router::<OperatorServer<control::ControlService>>().await?;
    let token = gwb_proto::server::token_check(token.as_ref());
    let operator = OperatorServer::with_interceptor(
        control::ControlService::new(engine.clone(), coordinator, clock),
        move |request| token.check(request),
    );
    let server = tokio::spawn(gwb_proto::server::serve(router.add_service(operator), listener, shutdown.clone()));
    tracing::info!(listen = %bound, "planner running");

    let served = server.await?;
    for task in [events, outcomes, outbox] {
        task.await?;
    }
    served?;
    tracing::info!("planner stopped");
    Ok(())
}
