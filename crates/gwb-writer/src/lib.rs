//! gwb-writer: consumes writeback commands (one partition at a time, in order),
//! applies them to AD through gwb-ldap and publishes an outcome for each. A command is
//! acked only after its outcome is confirmed by the broker; transient directory errors
//! are retried in place so a partition never applies a later command before an
//! earlier one.
//!
//! [`run`] is the whole service; the binary only parses its arguments, loads the
//! configuration and waits for a signal, so tests can run the writer in-process.

mod apply;
pub mod config;
mod control;
mod drift;
mod merge;
mod observe;
mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Mutex;

use gwb_bus::Publisher;
use gwb_ldap::{Directory, DirectoryConfig};
use gwb_runtime::backoff::Backoff;
use gwb_runtime::clock::Clock;
use gwb_runtime::secret;
use gwb_runtime::shutdown::Shutdown;

pub use config::{Config, ConfigError};

/// Listeners bound by the caller (tests bind port 0 and pass them in); `None` binds
/// the configured address.
#[derive(Default)]
pub struct Listeners {
    pub control: Option<TcpListener>,
}

/// Why the writer could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Secret(#[from] secret::SecretError),
    #[error("RabbitMQ: {0}")]
    Bus(#[from] gwb_bus::BusError),
    #[error(transparent)]
    Listen(#[from] gwb_runtime::listen::ListenError),
    #[error(transparent)]
    Server(#[from] gwb_proto::server::ServerError),
    #[error("writer task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Retries of a transient directory error: 400 ms doubling to 30 s, each delay cut by
/// up to half at random so writers that lost the same DC do not retry in lockstep.
pub(crate) const DIRECTORY_BACKOFF: Backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(30), 0.5);

/// What the partition consumers, the status reporter and the control API share.
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
    /// The wall clock (a parameter, so tests can set the time).
    pub(crate) clock: Clock,
    /// Batches apply and publish their outcomes under a shared hold; the directory
    /// watcher publishes an observation under an exclusive one (see `drift`).
    pub(crate) apply_gate: tokio::sync::RwLock<()>,
    /// objectGUIDs of the groups written since the watcher's last poll.
    pub(crate) written: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Runs the writer until `shutdown`: one consumer per partition, the status reporter
/// and the control API.
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), WriterError> {
    let control = config.writer.control()?;
    let control_token = control.load_token("writer.control", config::DEFAULT_CONTROL_LISTEN)?;
    let directory_config = directory_config(&config)?;
    let partitions = partitions(&config.writer.partitions, gwb_bus::Topology::new(&config.bus).partitions())?;
    let writer_id = config.writer.id.clone().unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let publisher = Publisher::connect(config.bus.clone()).await?;
    let topology = publisher.topology().clone();
    let control_listener = match listeners.control {
        Some(listener) => {
            gwb_runtime::listen::report("control", "writer.control.listen", &listener)?;
            listener
        }
        None => {
            let listen = control.listen_or(config::DEFAULT_CONTROL_LISTEN);
            gwb_runtime::listen::bind("control", "writer.control.listen", listen).await?
        }
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let shared = Arc::new(Shared {
        writer_id,
        dry_run: config.writer.dry_run,
        directory_config,
        publisher,
        shutdown: shutdown.clone(),
        pause: control::PauseSwitch::new(),
        snapshot: Arc::new(std::sync::Mutex::new(gwb_proto::control::v1::WriterState {
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })),
        health: health_reporter,
        clock: Clock::system(),
        apply_gate: tokio::sync::RwLock::new(()),
        written: Default::default(),
    });

    let mut tasks = Vec::new();
    for partition in partitions {
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
    tasks.push(tokio::spawn(status::report_status(
        shared.clone(),
        Duration::from_secs(config.writer.status_interval_seconds.max(1)),
    )));
    if config.drift.watch && !shared.dry_run {
        tasks.push(tokio::spawn(drift::watch(shared.clone(), config.drift.clone())));
    }
    let service = control::WriterService { pause: shared.pause.clone(), snapshot: shared.snapshot.clone() };
    let server = tokio::spawn(control::serve(
        control_listener,
        service,
        health_service,
        gwb_proto::server::token_check(control_token.as_ref()),
        shutdown.clone(),
    ));
    tracing::info!(writer_id = %shared.writer_id, dry_run = shared.dry_run, "writer running");
    for task in tasks {
        task.await?;
    }
    server.await??;
    tracing::info!("writer stopped");
    Ok(())
}

/// The directory connection settings, with the bind password read from its file.
fn directory_config(config: &Config) -> Result<DirectoryConfig, WriterError> {
    let settings = &config.directory;
    let password = secret::read_secret_file("directory.bind_password_file", &settings.bind_password_file)?;
    if settings.managed_ous.is_empty() {
        return Err(ConfigError("directory.managed_ous must list at least one OU".into()).into());
    }
    let mut directory_config = DirectoryConfig::new(
        settings.url.clone(),
        settings.ca_file.clone(),
        settings.bind_dn.clone(),
        password.expose(),
        settings.managed_ous.clone(),
    );
    directory_config.starttls = settings.starttls;
    directory_config.operation_timeout = Duration::from_secs(settings.operation_timeout_seconds.max(1));
    directory_config.member_batch_size = settings.member_batch_size;
    directory_config.follow_display_name = settings.follow_display_name;
    directory_config.foreign_domain_sids = settings.foreign_domain_sids.clone();
    directory_config.adopt_converted_groups = settings.adopt_converted_groups;
    directory_config.adoptable_ous = settings.adoptable_ous.clone();
    Ok(directory_config)
}

/// The partitions to consume: the configured ones (each below the bus's `count`), or
/// all of them when none is listed.
fn partitions(configured: &[u16], count: u16) -> Result<Vec<u16>, ConfigError> {
    if configured.is_empty() {
        return Ok((0..count).collect());
    }
    match configured.iter().find(|&&partition| partition >= count) {
        Some(partition) => {
            Err(ConfigError(format!("writer.partitions: {partition} is not below bus.command_partitions ({count})")))
        }
        None => Ok(configured.to_vec()),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "writer".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_default_to_all_and_must_exist() {
        assert_eq!(partitions(&[], 3).unwrap(), vec![0, 1, 2]);
        assert_eq!(partitions(&[2, 0], 3).unwrap(), vec![2, 0]);
        let error = partitions(&[1, 3], 3).unwrap_err().to_string();
        assert!(error.contains("writer.partitions: 3 is not below bus.command_partitions (3)"), "{error}");
    }
}
