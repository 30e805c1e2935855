//! gwb-planner: consumes change events in order, keeps the desired state in SQLite,
//! decides what AD must look like and emits writer commands through a transactional
//! outbox; records the writer's outcomes; hosts the operator's gRPC control API.

mod config;
mod control;
mod coordination;
mod engine;
mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use prost::Message as _;
use tokio::sync::Notify;

use gwb_bus::{Delivery, Disposition, Message, Publisher, Route};
use gwb_proto::commands::v1 as cmd;
use gwb_proto::control::v1::operator_server::OperatorServer;
use gwb_proto::events::v1 as ev;
use gwb_runtime::shutdown::Shutdown;
use gwb_runtime::{secret, shutdown, telemetry};

use engine::{Engine, PolicySettings};

#[derive(Parser)]
#[command(name = "gwb-planner", version, about = "Planner and control API of Group Writeback")]
struct Args {
    /// TOML configuration file; `GWB_*` environment variables override it.
    #[arg(long, env = "GWB_CONFIG")]
    config: Option<PathBuf>,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

type SharedEngine = Arc<Mutex<Engine>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: config::Config = gwb_runtime::config::load(args.config.as_deref())?;
    config.validate()?;
    telemetry::init_logging("gwb-planner", &config.log);
    let metrics = gwb_runtime::metrics::Metrics::install("gwb-planner")?;

    let token = match &config.control.token_file {
        Some(path) => Some(secret::read_secret_file("control.token_file", path)?),
        None => {
            tracing::warn!(listen = %config.control.listen, "control.token_file is not set: the control API accepts unauthenticated calls on loopback");
            None
        }
    };
    let db = store::open(&config.planner.state_path)
        .with_context(|| format!("planner.state_path {}", config.planner.state_path.display()))?;
    let policy = PolicySettings {
        scope: config.scope(),
        placement: config.placement(),
        member_batch_size: config.planner.member_batch_size,
        on_leave_scope: config.planner.on_leave_scope,
        on_soft_delete: config.planner.on_soft_delete,
        retired_ou: config.planner.retired_ou.clone(),
        partitions: config.bus.command_partitions.max(1),
        threshold: config.deletion.threshold(),
    };
    let coordination_token = match &config.coordination.token_file {
        Some(path) => Some(secret::read_secret_file("coordination.token_file", path)?),
        None => None,
    };
    let coordinator = coordination::Coordinator::new(
        config.coordination.collector_endpoint.clone(),
        config.coordination.writer_endpoints.clone(),
        coordination_token,
    );
    let engine: SharedEngine = Arc::new(Mutex::new(Engine::new(db, policy)));
    let publisher = Publisher::connect(config.bus.clone()).await?;
    let listener = tokio::net::TcpListener::bind(config.control.listen)
        .await
        .with_context(|| format!("control.listen {}", config.control.listen))?;
    let shutdown = shutdown::on_signals();
    gwb_runtime::metrics::start(&config.metrics, &metrics, shutdown.clone()).await?;
    let outbox_ready = Arc::new(Notify::new());

    let topology = publisher.topology().clone();
    // Up to 10 ms of linger: during a full round a batch then holds a page's worth of
    // events or more (one commit for all of them), and an incremental change waits at
    // most 10 ms longer.
    let (max_batch, linger) = (usize::from(config.bus.prefetch), Duration::from_millis(10));
    let events = tokio::spawn(gwb_bus::consume_batches(
        config.bus.clone(),
        topology.events_queue(),
        shutdown.clone(),
        max_batch,
        linger,
        {
            let engine = engine.clone();
            let ready = outbox_ready.clone();
            move |deliveries| handle_events(engine.clone(), ready.clone(), deliveries)
        },
    ));
    let outcomes = tokio::spawn(gwb_bus::consume(config.bus.clone(), topology.outcomes_queue(), shutdown.clone(), {
        let engine = engine.clone();
        let ready = outbox_ready.clone();
        move |delivery| handle_outcome(engine.clone(), ready.clone(), delivery)
    }));
    let staging = config.planner.staging;
    if staging {
        tracing::warn!("staging mode: commands are planned and audited, never sent to the writer");
    }
    let outbox =
        tokio::spawn(publish_outbox(engine.clone(), publisher, outbox_ready.clone(), staging, shutdown.clone()));
    let server = tokio::spawn(serve_control(
        listener,
        engine.clone(),
        coordinator,
        gwb_proto::auth::TokenCheck::new(token.map(|t| t.expose().to_string())),
        shutdown.clone(),
    ));
    tracing::info!(listen = %config.control.listen, "planner running");

    server.await??;
    for task in [events, outcomes, outbox] {
        task.await?;
    }
    tracing::info!("planner stopped");
    telemetry::flush_traces();
    Ok(())
}

async fn serve_control(
    listener: tokio::net::TcpListener,
    engine: SharedEngine,
    coordinator: coordination::Coordinator,
    token: gwb_proto::auth::TokenCheck,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<OperatorServer<control::ControlService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gwb_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let operator =
        OperatorServer::with_interceptor(control::ControlService::new(engine, coordinator), move |request| {
            token.check(request)
        });
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(operator)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            shutdown.triggered().await
        })
        .await?;
    Ok(())
}

const EVENT_TYPE: &str = "gwb.events.v1.ChangeEvent";
const OUTCOME_TYPE: &str = "gwb.commands.v1.Outcome";
const WRITER_STATUS_TYPE: &str = "gwb.commands.v1.WriterStatus";

/// Plans every event of a delivery batch in one transaction (see
/// `Engine::apply_events`), each under a span parented by its own message's trace.
async fn handle_events(engine: SharedEngine, outbox_ready: Arc<Notify>, deliveries: Vec<Delivery>) -> Vec<Disposition> {
    let mut dispositions = vec![Disposition::Requeue; deliveries.len()];
    let mut events = Vec::with_capacity(deliveries.len());
    let mut indices = Vec::with_capacity(deliveries.len());
    for (index, delivery) in deliveries.iter().enumerate() {
        // Bytes of another message type or version may well decode as this one
        // (protobuf is lenient): the declared type decides, never a successful decode.
        if delivery.kind.as_deref() != Some(EVENT_TYPE) {
            tracing::error!(message_id = ?delivery.message_id, kind = ?delivery.kind, "event of an unknown type or version dead-lettered");
            dispositions[index] = Disposition::DeadLetter;
            continue;
        }
        match ev::ChangeEvent::decode(delivery.payload.as_slice()) {
            Ok(event) if event.change.is_some() && !event.event_id.is_empty() => {
                let span = tracing::info_span!("plan_event", event_id = %event.event_id);
                delivery.set_parent_of(&span);
                events.push((event, span));
                indices.push(index);
            }
            Ok(_) | Err(_) => {
                tracing::error!(message_id = ?delivery.message_id, "undecodable or empty change event dead-lettered");
                dispositions[index] = Disposition::DeadLetter;
            }
        }
    }
    if events.is_empty() {
        return dispositions;
    }
    let result = tokio::task::spawn_blocking(move || {
        let mut engine = engine.lock().map_err(|_| anyhow::anyhow!("planner state lock poisoned"))?;
        Ok::<_, anyhow::Error>(engine.apply_events(&events, now_ms()))
    })
    .await;
    let (applied, failure) = match result {
        Ok(Ok((applied, failure))) => (applied, failure.map(anyhow::Error::from)),
        Ok(Err(error)) => (0, Some(error)),
        Err(error) => (0, Some(anyhow::Error::from(error))),
    };
    for &index in &indices[..applied] {
        dispositions[index] = Disposition::Ack;
    }
    if applied > 0 {
        outbox_ready.notify_one();
    }
    if let Some(error) = failure {
        // It and the events after it stay Requeue: redelivered in order.
        tracing::error!(%error, applied, "applying a change event failed; it and the events after it will be redelivered");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    dispositions
}

async fn handle_outcome(engine: SharedEngine, outbox_ready: Arc<Notify>, delivery: Delivery) -> Disposition {
    let kind = delivery.kind.clone().unwrap_or_default();
    if kind != OUTCOME_TYPE && kind != WRITER_STATUS_TYPE {
        tracing::error!(message_id = ?delivery.message_id, %kind, "outcome of an unknown type or version dead-lettered");
        return Disposition::DeadLetter;
    }
    let payload = delivery.payload;
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
        let mut engine = engine.lock().map_err(|_| anyhow::anyhow!("planner state lock poisoned"))?;
        if kind == WRITER_STATUS_TYPE {
            let Ok(status) = cmd::WriterStatus::decode(payload.as_slice()) else { return Ok(false) };
            engine.apply_writer_status(&status, now_ms())?;
        } else {
            let Ok(outcome) = cmd::Outcome::decode(payload.as_slice()) else { return Ok(false) };
            if outcome.command_id.is_empty() {
                return Ok(false);
            }
            engine.apply_outcome(&outcome, now_ms())?;
        }
        Ok(true)
    })
    .await;
    match result {
        Ok(Ok(true)) => {
            outbox_ready.notify_one();
            Disposition::Ack
        }
        Ok(Ok(false)) => {
            tracing::error!(message_id = ?delivery.message_id, "undecodable outcome dead-lettered");
            Disposition::DeadLetter
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "recording an outcome failed; it will be redelivered");
            tokio::time::sleep(Duration::from_millis(500)).await;
            Disposition::Requeue
        }
        Err(error) => {
            tracing::error!(%error, "planner task failed");
            Disposition::Requeue
        }
    }
}

fn update_gauges(engine: &SharedEngine) {
    let (Some(metrics), Ok(engine)) = (gwb_runtime::metrics::global(), engine.lock()) else { return };
    if let Ok((held, skipped)) = engine.gauges() {
        metrics.held_deletions(held);
        for (reason, count) in skipped {
            metrics.skipped_members(&reason, count);
        }
    }
}

/// Publishes outbox rows in order with confirms, then deletes them. After a crash the
/// rows are still there and are published again (the writer is idempotent).
async fn publish_outbox(
    engine: SharedEngine,
    publisher: Publisher,
    ready: Arc<Notify>,
    staging: bool,
    shutdown: Shutdown,
) {
    let mut last_prune = 0i64;
    let mut last_gauges = 0i64;
    while !shutdown.is_triggered() {
        if staging {
            let staged = {
                let engine = engine.clone();
                tokio::task::spawn_blocking(move || {
                    engine.lock().ok().and_then(|mut e| e.stage_outbox(now_ms()).ok()).unwrap_or(0)
                })
                .await
                .unwrap_or(0)
            };
            if staged == 0 {
                tokio::select! {
                    _ = ready.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.triggered() => return,
                }
            }
            continue;
        }
        let batch = {
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || {
                engine.lock().ok().and_then(|e| e.outbox_batch(1000).ok()).unwrap_or_default()
            })
            .await
            .unwrap_or_default()
        };
        if batch.is_empty() {
            let now = now_ms();
            if now - last_gauges > 5_000 {
                last_gauges = now;
                update_gauges(&engine);
            }
            if now - last_prune > 3_600_000 {
                last_prune = now;
                if let Ok(mut engine) = engine.lock() {
                    let _ = engine.prune_processed(now - 7 * 24 * 3_600_000);
                }
            }
            tokio::select! {
                _ = ready.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.triggered() => return,
            }
            continue;
        }
        let last_seq = batch.last().map(|row| row.seq).unwrap_or(0);
        let messages: Vec<(Route, Message)> = batch
            .into_iter()
            .map(|row| {
                let message = Message {
                    id: row.command_id,
                    kind: gwb_bus::COMMAND_TYPE,
                    payload: row.payload,
                    headers: row.headers,
                    timestamp_ms: now_ms(),
                };
                (Route::Command { partition: row.partition }, message)
            })
            .collect();
        match publisher.publish_all(&messages).await {
            Ok(()) => {
                if let Ok(mut engine) = engine.lock()
                    && let Err(error) = engine.outbox_published(last_seq)
                {
                    tracing::error!(%error, "could not trim the outbox; commands will be published again");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "publishing commands failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.triggered() => return,
                }
            }
        }
    }
}
