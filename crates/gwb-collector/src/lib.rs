//! gwb-collector: polls Microsoft Graph's group and user deltas and publishes what
//! changed as protobuf events, with publisher confirms. A round's deltaLink is stored
//! only after every event of the round is confirmed, so a crash means re-reading,
//! never a gap.
//!
//! Rounds run every `poll_interval_seconds`, and at once when Graph sends a change
//! notification or the planner calls `SyncNow` (requests during a round coalesce into
//! one more round). [`run`] is the whole service; the binary only loads the
//! configuration and waits for a signal.

pub mod config;
mod control;
mod cursor;
mod error;
mod notifications;
mod round;
mod schedule;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use gwb_bus::Publisher;
use gwb_graph::{GraphClient, Resource};
use gwb_runtime::clock::Clock;
use gwb_runtime::secret::{self, Secret};
use gwb_runtime::shutdown::Shutdown;

pub use config::Config;
pub use error::CollectorError;

/// Listeners bound by the caller (tests bind port 0 and pass them in); `None` binds
/// the configured address.
#[derive(Default)]
pub struct Listeners {
    pub control: Option<TcpListener>,
    pub notifications: Option<TcpListener>,
}

/// What `GetCollectorStatus` reports.
#[derive(Debug, Default, Clone)]
pub(crate) struct Status {
    pub users_round_completed_ms: i64,
    pub groups_round_completed_ms: i64,
    pub last_error: String,
    pub rounds_completed: u64,
    pub rounds_failed: u64,
    pub notifications_active: bool,
    /// Where groups' `writebackConfiguration` was read from in the last groups round.
    pub writeback_source: String,
    /// Graph's resource-unit budget after the last round.
    pub graph_budget: String,
}

/// State shared by the round loop, the notification receiver and the control API.
#[derive(Clone)]
pub(crate) struct Shared {
    /// A permit wakes the round loop now; several wake-ups before it runs are one.
    pub wake: Arc<Notify>,
    /// Set by FullResync: forget the cursors before the next round.
    pub full_resync: Arc<AtomicBool>,
    pub running: Arc<AtomicBool>,
    pub status: Arc<Mutex<Status>>,
    /// The wall clock (a parameter, so tests can set the time).
    pub clock: Clock,
}

impl Shared {
    fn new(clock: Clock) -> Self {
        Shared {
            clock,
            wake: Arc::new(Notify::new()),
            full_resync: Arc::new(AtomicBool::new(false)),
            running: Arc::new(AtomicBool::new(false)),
            status: Arc::new(Mutex::new(Status::default())),
        }
    }

    /// The status is plain data: a panic elsewhere cannot leave it inconsistent in a
    /// way worth refusing reads for.
    pub fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Uses the injected listener or binds the configured address (port 0 allowed), and
/// reports what was bound (`gwb_runtime::listen`).
async fn bind(
    injected: Option<TcpListener>,
    name: &str,
    key: &str,
    address: std::net::SocketAddr,
) -> Result<TcpListener, CollectorError> {
    match injected {
        Some(listener) => {
            gwb_runtime::listen::report(name, key, &listener)?;
            Ok(listener)
        }
        None => Ok(gwb_runtime::listen::bind(name, key, address).await?),
    }
}

/// Runs the collector until `shutdown`: the delta loop, the control API and, when
/// configured, the change-notification receiver with its subscriptions.
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), CollectorError> {
    let credential = config.graph.load_credential()?;
    let graph = Arc::new(GraphClient::new(config.graph.clone(), credential)?);
    let settings = &config.collector;
    let cursors = cursor::CursorStore::open(&settings.state_path)?;
    let control_listen = settings.control.listen_or(config::DEFAULT_CONTROL_LISTEN);
    let control_token = settings
        .control
        .load_token("collector.control", config::DEFAULT_CONTROL_LISTEN)
        .map_err(|e| CollectorError::Config(e.to_string()))?;
    let notification_secret: Option<Secret> = match &settings.notifications {
        Some(n) => {
            let state = secret::read_secret_file("collector.notifications.client_state_file", &n.client_state_file)
                .map_err(|e| CollectorError::Config(e.to_string()))?;
            if state.expose().chars().count() > 128 {
                return Err(CollectorError::Config(
                    "collector.notifications.client_state_file: clientState must be at most 128 characters".into(),
                ));
            }
            Some(state)
        }
        None => None,
    };
    let publisher = Publisher::connect(config.bus.clone()).await?;
    let shared = Shared::new(Clock::system());

    let control_listener = bind(listeners.control, "control", "collector.control.listen", control_listen).await?;
    let control_task = tokio::spawn(control::serve(
        control_listener,
        shared.clone(),
        gwb_proto::server::token_check(control_token.as_ref()),
        shutdown.clone(),
    ));

    let mut background = Vec::new();
    if let (Some(n), Some(client_state)) = (&settings.notifications, notification_secret) {
        let listener =
            bind(listeners.notifications, "notifications", "collector.notifications.listen", n.listen).await?;
        let (lifecycle_tx, lifecycle_rx) = tokio::sync::mpsc::unbounded_channel();
        let receiver = notifications::Receiver::new(shared.clone(), client_state.clone(), lifecycle_tx);
        background.push(tokio::spawn(notifications::serve(listener, receiver, shutdown.clone())));
        let manager = notifications::Manager::new(graph.clone(), n.clone(), client_state, shared.clone());
        background.push(tokio::spawn(manager.run(lifecycle_rx, shutdown.clone())));
    }

    let mut collector = round::Collector::new(
        graph,
        publisher,
        cursors,
        settings.max_pages_per_round,
        Duration::from_secs(settings.page_timeout_seconds.max(1)),
        shared.clock.clone(),
    );
    let idle_interval = Duration::from_millis(settings.poll_interval_ms());
    let active_interval = Duration::from_millis(settings.active_poll_interval_ms());
    if settings.round_timeout_seconds.is_some() {
        tracing::warn!(
            "collector.round_timeout_seconds is deprecated and ignored: a round resumes page by page, \
             and a page is abandoned after collector.page_timeout_seconds"
        );
    }
    tracing::info!(
        poll_interval_ms = idle_interval.as_millis() as u64,
        active_poll_interval_ms = active_interval.as_millis() as u64,
        control = %control_listen,
        "collector running"
    );
    let mut schedule = schedule::Schedule::new(idle_interval, active_interval);
    let mut requested = false;
    while !shutdown.is_triggered() {
        let outcome = tokio::select! {
            outcome = run_rounds(&mut collector, &shared) => outcome,
            () = shutdown.triggered() => break,
        };
        let interval = schedule.after(outcome, requested);
        if outcome.unauthorized {
            tracing::warn!(
                failures = schedule.auth_failures(),
                next_attempt_in_s = interval.as_secs(),
                "Graph refused the credentials: backing off (fix the secret or certificate; SyncNow retries at once)"
            );
        }
        requested = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            () = shared.wake.notified() => {
                tracing::debug!("round requested");
                true
            }
            () = shutdown.triggered() => false,
        };
    }
    for task in background {
        let _ = task.await;
    }
    match control_task.await {
        Ok(result) => result?,
        Err(e) => return Err(CollectorError::Control(e.to_string())),
    }
    tracing::info!("collector stopped");
    Ok(())
}

/// Users, then groups: the planner resolves a group's members from what it knows about
/// users, so fresh anchors should arrive before the groups using them.
/// Returns how many changed objects the rounds read.
async fn run_rounds(collector: &mut round::Collector, shared: &Shared) -> schedule::RoundsOutcome {
    shared.running.store(true, Ordering::SeqCst);
    let mut outcome = schedule::RoundsOutcome::default();
    if shared.full_resync.swap(false, Ordering::SeqCst) {
        match collector.forget_cursors() {
            Ok(()) => tracing::info!("full resync requested: delta cursors forgotten"),
            Err(error) => {
                // Try again before the next round rather than lose the request.
                shared.full_resync.store(true, Ordering::SeqCst);
                record_failure(shared, &error);
            }
        }
    }
    for resource in Resource::ALL {
        let round = collector.run_round(resource).await;
        let metrics = gwb_runtime::metrics::global();
        match round {
            Ok(objects) => {
                outcome.changed += objects;
                if let Some(metrics) = metrics {
                    metrics.delta_round(resource.path(), "completed");
                }
                let budget = collector.budget_description();
                let mut status = shared.status();
                status.graph_budget = budget;
                status.rounds_completed += 1;
                status.last_error.clear();
                let now = shared.clock.now_ms();
                match resource {
                    Resource::Users => status.users_round_completed_ms = now,
                    Resource::Groups => {
                        status.groups_round_completed_ms = now;
                        status.writeback_source = collector.writeback_source().describe().to_string();
                    }
                }
            }
            Err(error) => {
                if let Some(metrics) = metrics {
                    metrics.delta_round(resource.path(), "failed");
                }
                tracing::warn!(%error, resource = resource.path(), "delta round failed; the cursor did not advance and the round will be retried");
                outcome.unauthorized = matches!(error, CollectorError::Graph(gwb_graph::GraphError::Unauthorized(_)));
                record_failure(shared, &error);
                break;
            }
        }
    }
    shared.running.store(false, Ordering::SeqCst);
    outcome
}

fn record_failure(shared: &Shared, error: &CollectorError) {
    let mut status = shared.status();
    status.rounds_failed += 1;
    status.last_error = error.to_string();
}
