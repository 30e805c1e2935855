//! gwb-writer: consumes writeback commands (one partition at a time, in order),
//! applies them to AD through gwb-ldap and publishes an outcome for each. A command is
//! acked only after its outcome is confirmed by the broker; transient directory errors
//! are retried in place so a partition never applies a later command before an
//! earlier one.

mod apply;
mod config;
mod control;
mod convert;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use prost::Message as _;
use rand::Rng;
use tokio::sync::Mutex;

use gwb_bus::{Message, Publisher, Route};
use gwb_core::command::ApplyReport;
use gwb_ldap::{Directory, DirectoryConfig, DirectoryError};
use gwb_proto::commands::v1 as cmd;
use gwb_runtime::shutdown::Shutdown;
use gwb_runtime::{secret, shutdown, telemetry};

#[derive(Parser)]
#[command(name = "gwb-writer", version, about = "AD writer of Group Writeback")]
struct Args {
    /// TOML configuration file; `GWB_*` environment variables override it.
    #[arg(long, env = "GWB_CONFIG")]
    config: Option<PathBuf>,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) struct Shared {
    pub(crate) writer_id: String,
    pub(crate) dry_run: bool,
    pub(crate) directory_config: DirectoryConfig,
    pub(crate) publisher: Publisher,
    pub(crate) shutdown: Shutdown,
    pub(crate) pause: control::PauseSwitch,
    pub(crate) snapshot: control::DirectorySnapshot,
    /// gRPC health of the writer service: serving only while the directory answers.
    pub(crate) health: tonic_health::server::HealthReporter,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: config::Config = gwb_runtime::config::load(args.config.as_deref())?;
    telemetry::init_logging("gwb-writer", &config.log);
    let metrics = gwb_runtime::metrics::Metrics::install("gwb-writer")?;
    let _ = rustls::crypto::ring::default_provider().install_default();

    let password = secret::read_secret_file("directory.bind_password_file", &config.directory.bind_password_file)?;
    let mut directory_config = DirectoryConfig::new(
        config.directory.url.clone(),
        config.directory.ca_file.clone(),
        config.directory.bind_dn.clone(),
        password.expose(),
        config.directory.managed_ous.clone(),
    );
    directory_config.starttls = config.directory.starttls;
    directory_config.operation_timeout = Duration::from_secs(config.directory.operation_timeout_seconds.max(1));
    directory_config.member_batch_size = config.directory.member_batch_size;
    anyhow::ensure!(!config.directory.managed_ous.is_empty(), "directory.managed_ous must list at least one OU");

    let writer_id = config.writer.id.clone().unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let publisher = Publisher::connect(config.bus.clone()).await?;
    let topology = publisher.topology().clone();
    let shutdown = shutdown::on_signals();
    gwb_runtime::metrics::start(&config.metrics, &metrics, shutdown.clone()).await?;
    let control_token = match &config.writer.control_token_file {
        Some(path) => Some(secret::read_secret_file("writer.control_token_file", path)?.expose().to_string()),
        None => {
            anyhow::ensure!(
                config.writer.control_listen.ip().is_loopback(),
                "writer.control_token_file is required when writer.control_listen ({}) is not a loopback address",
                config.writer.control_listen
            );
            None
        }
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let control_listener = tokio::net::TcpListener::bind(config.writer.control_listen)
        .await
        .map_err(|e| anyhow::anyhow!("writer.control_listen {}: {e}", config.writer.control_listen))?;
    let shared = Arc::new(Shared {
        writer_id,
        dry_run: config.writer.dry_run,
        directory_config,
        publisher,
        shutdown: shutdown.clone(),
        pause: control::PauseSwitch::new(),
        snapshot: Arc::new(std::sync::Mutex::new(cmd_state_default())),
        health: health_reporter,
    });

    let partitions: Vec<u16> = if config.writer.partitions.is_empty() {
        (0..topology.partitions()).collect()
    } else {
        config.writer.partitions.clone()
    };
    let mut tasks = Vec::new();
    for partition in partitions {
        anyhow::ensure!(
            partition < topology.partitions(),
            "writer.partitions: {partition} is not below bus.command_partitions ({})",
            topology.partitions()
        );
        let shared = shared.clone();
        let directory: Arc<Mutex<Option<Directory>>> = Arc::new(Mutex::new(None));
        tasks.push(tokio::spawn(gwb_bus::consume_batches(
            config.bus.clone(),
            topology.command_queue(partition),
            shutdown.clone(),
            usize::from(config.bus.prefetch),
            Duration::ZERO,
            move |deliveries| apply::handle_batch(shared.clone(), directory.clone(), deliveries),
        )));
    }
    tasks.push(tokio::spawn(report_status(
        shared.clone(),
        Duration::from_secs(config.writer.status_interval_seconds.max(1)),
    )));
    let server = tokio::spawn(serve_control(
        control_listener,
        health_service,
        shared.clone(),
        gwb_proto::auth::TokenCheck::new(control_token),
    ));
    tracing::info!(writer_id = %shared.writer_id, dry_run = shared.dry_run, "writer running");
    for task in tasks {
        task.await?;
    }
    server.await??;
    tracing::info!("writer stopped");
    telemetry::flush_traces();
    Ok(())
}

fn cmd_state_default() -> gwb_proto::control::v1::WriterState {
    gwb_proto::control::v1::WriterState { version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }
}

async fn serve_control(
    listener: tokio::net::TcpListener,
    health_service: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    shared: Arc<Shared>,
    token: gwb_proto::auth::TokenCheck,
) -> anyhow::Result<()> {
    use gwb_proto::control::v1::writer_server::WriterServer;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gwb_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = control::WriterService { pause: shared.pause.clone(), snapshot: shared.snapshot.clone() };
    let shutdown = shared.shutdown.clone();
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(WriterServer::with_interceptor(service, move |request| token.check(request)))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            shutdown.triggered().await
        })
        .await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "writer".into())
}

pub(crate) fn fill_report(outcome: &mut cmd::Outcome, report: ApplyReport) {
    outcome.group = report.group.map(|g| cmd::AppliedGroup {
        dn: g.dn,
        object_guid: g.object_guid,
        object_sid: g.object_sid,
        sam_account_name: g.sam_account_name,
    });
    outcome.members_added = report.members_added;
    outcome.members_removed = report.members_removed;
    outcome.members_unchanged = report.members_unchanged;
    outcome.members_rejected = report
        .members_rejected
        .into_iter()
        .map(|(member, reason)| cmd::RejectedMember { member: Some(convert::member_message(&member)), reason })
        .collect();
    outcome.changed = report.changed;
}

pub(crate) fn fill_failure(outcome: &mut cmd::Outcome, error: &DirectoryError) {
    outcome.status = cmd::OutcomeStatus::Failed as i32;
    outcome.ldap_code = error.code.unwrap_or(0);
    outcome.message = error.message.clone();
    outcome.completed_at_ms = now_ms();
}

/// LDAP operations by kind and result, with their duration.
pub(crate) fn observe_ldap(record: &gwb_ldap::OperationRecord) {
    if let Some(metrics) = gwb_runtime::metrics::global() {
        metrics.ldap_operation(record.kind.as_str(), &record.outcome.label(), record.duration);
    }
}

pub(crate) fn record_outcome(outcome: &cmd::Outcome) {
    let Some(metrics) = gwb_runtime::metrics::global() else { return };
    let result = match cmd::OutcomeStatus::try_from(outcome.status) {
        Ok(cmd::OutcomeStatus::Applied) => "applied",
        Ok(cmd::OutcomeStatus::DryRun) => "dry_run",
        _ => "failed",
    };
    metrics.command(&outcome.kind, result);
    if result == "applied" {
        metrics.members_written(u64::from(outcome.members_added));
        if outcome.observed_at_ms > 0 {
            // From the moment the collector saw the change in Graph to this AD write.
            let latency = (outcome.completed_at_ms - outcome.observed_at_ms).max(0) as u64;
            metrics.end_to_end_latency(Duration::from_millis(latency));
        }
    }
}

/// Periodic health and capability report to the planner.
async fn report_status(shared: Arc<Shared>, every: Duration) {
    let mut directory: Option<Directory> = None;
    while !shared.shutdown.is_triggered() {
        let mut status = cmd::WriterStatus {
            writer_id: shared.writer_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            dry_run: shared.dry_run,
            at_ms: now_ms(),
            ..Default::default()
        };
        if shared.dry_run {
            status.directory_connected = true;
            status.detail = "dry run: no directory connection".into();
        } else {
            let healthy = match directory.as_mut() {
                Some(existing) => existing.check_health().await,
                None => match Directory::connect(shared.directory_config.clone()).await {
                    Ok(connected) => {
                        directory = Some(connected);
                        Ok(())
                    }
                    Err(error) => Err(error),
                },
            };
            match (healthy, directory.as_ref()) {
                (Ok(()), Some(connected)) => {
                    let caps = connected.capabilities();
                    status.directory_connected = true;
                    status.has_exchange_schema = caps.has_exchange_schema;
                    status.has_external_directory_object_id = caps.has_external_directory_object_id;
                    status.supports_permissive_modify = caps.supports_permissive_modify;
                    status.missing_ous = caps.missing_ous.clone();
                    status.unwritable_ous = caps.unwritable_ous.clone();
                    let mut detail = format!("connected to {}", caps.dns_host_name);
                    if !caps.missing_ous.is_empty() {
                        detail.push_str(&format!("; managed OUs missing: {}", caps.missing_ous.join("; ")));
                    }
                    if !caps.unwritable_ous.is_empty() {
                        detail.push_str(&format!(
                            "; the bind account may not create groups in: {}",
                            caps.unwritable_ous.join("; ")
                        ));
                    }
                    status.detail = detail;
                }
                (Ok(()), None) => status.detail = "not connected".into(),
                (Err(error), _) => {
                    status.detail = error.to_string();
                    directory = None;
                }
            }
        }
        status.paused = shared.pause.reason().is_some();
        if let Some(metrics) = gwb_runtime::metrics::global() {
            metrics.set_healthy(status.directory_connected);
        }
        let serving = if status.directory_connected {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        shared.health.set_service_status("gwb.control.v1.Writer", serving).await;
        if let Ok(mut snapshot) = shared.snapshot.lock() {
            *snapshot = gwb_proto::control::v1::WriterState {
                writer_id: status.writer_id.clone(),
                version: status.version.clone(),
                paused: status.paused,
                pause_reason: String::new(),
                directory_connected: status.directory_connected,
                detail: status.detail.clone(),
                has_exchange_schema: status.has_exchange_schema,
                has_external_directory_object_id: status.has_external_directory_object_id,
                supports_permissive_modify: status.supports_permissive_modify,
                missing_ous: status.missing_ous.clone(),
                dry_run: status.dry_run,
                unwritable_ous: status.unwritable_ous.clone(),
            };
        }
        let message = Message {
            id: format!("status-{}-{}", shared.writer_id, status.at_ms),
            kind: "gwb.commands.v1.WriterStatus",
            payload: status.encode_to_vec(),
            headers: Default::default(),
            timestamp_ms: status.at_ms,
        };
        if let Err(error) = shared.publisher.publish(&Route::Outcomes, &message).await {
            tracing::warn!(%error, "could not publish writer status");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.shutdown.triggered() => {}
        }
    }
}

pub(crate) fn backoff(failures: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << failures.min(8)).min(30_000);
    Duration::from_millis((base as f64 * rand::rng().random_range(0.5..1.0)) as u64)
}
