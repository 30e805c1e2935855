//! Metrics: OpenTelemetry instruments exported in the Prometheus text format on
//! `GET /metrics`, next to a liveness probe on `GET /healthz`.
//!
//! [`Metrics`] is the product's whole catalog: one method per instrument, so metric
//! names and label sets are decided here once, named the Prometheus way (`_total` for
//! counters, `_seconds` for durations) and cannot drift between services. The exporter
//! runs with unit and counter suffixes disabled because the names already carry them.
//!
//! A service calls [`Metrics::install`] once (which also makes the instance reachable
//! through [`global`], so libraries such as `gwb-bus` record queue metrics without
//! being handed a handle) and [`start`] with its `[metrics]` section.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// `[metrics]` section, embedded by every service.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the `/metrics` and `/healthz` HTTP server, e.g. `0.0.0.0:9464`.
    /// Unset: no server (the instruments still work, nothing exposes them).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot build the Prometheus exporter: {0}")]
    Exporter(String),
    #[error(transparent)]
    Bind(#[from] crate::listen::ListenError),
    #[error("metrics server: {0}")]
    Serve(std::io::Error),
    #[error("cannot encode metrics: {0}")]
    Encode(String),
}

/// Buckets of `gwb_end_to_end_latency_seconds`: 10 ms (a hot pipeline) to 30 min
/// (Microsoft's own cycle, the figure to beat), roughly ×2.5 per step.
pub const END_TO_END_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0];

/// Buckets of `gwb_ldap_operation_duration_seconds`: 1 ms to the 30 s default
/// operation timeout.
pub const LDAP_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The product's instruments. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    service: &'static str,
    registry: prometheus::Registry,
    // Kept so the SDK's reader (and with it every instrument) lives as long as we do.
    _provider: SdkMeterProvider,
    healthy: AtomicBool,
    graph_requests: Counter<u64>,
    events_published: Counter<u64>,
    delta_rounds: Counter<u64>,
    commands: Counter<u64>,
    ldap_duration: Histogram<f64>,
    members_written: Counter<u64>,
    skipped_members: Gauge<u64>,
    held_deletions: Gauge<u64>,
    held_member_removals: Gauge<u64>,
    name_clashes: Gauge<u64>,
    queue_lag: Gauge<f64>,
    end_to_end: Histogram<f64>,
    dead_lettered: Counter<u64>,
    messages_published: Counter<u64>,
    messages_consumed: Counter<u64>,
    drift_detected: Counter<u64>,
    drift_repaired: Counter<u64>,
    contested_groups: Gauge<u64>,
    drift_watch_operations: Counter<u64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("service", &self.inner.service).finish_non_exhaustive()
    }
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// The instance [`Metrics::install`] registered, if any. Libraries record through this
/// so that a service wires metrics once instead of threading a handle everywhere; in
/// processes that never install one (unit tests, tools) recording is skipped.
pub fn global() -> Option<&'static Metrics> {
    GLOBAL.get()
}

impl Metrics {
    /// A fresh, independent set of instruments (tests use several per process).
    pub fn new(service: &'static str) -> Result<Self, MetricsError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_units()
            .without_counter_suffixes()
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| MetricsError::Exporter(e.to_string()))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("gwb");
        let version = env!("CARGO_PKG_VERSION");
        meter
            .u64_gauge("gwb_build_info")
            .with_description("Always 1; labels name the service and its version.")
            .build()
            .record(1, &[KeyValue::new("service", service), KeyValue::new("version", version)]);
        register_process_metrics(&meter);
        let inner = Inner {
            service,
            registry,
            healthy: AtomicBool::new(true),
            graph_requests: counter(&meter, "gwb_graph_requests_total", "Microsoft Graph HTTP requests by response status (`network_error` when none came back)."),
            events_published: counter(&meter, "gwb_events_published_total", "Change events the collector published with a broker confirm."),
            delta_rounds: counter(&meter, "gwb_delta_rounds_total", "Graph delta rounds by resource (users, groups) and result (ok, failed, resync)."),
            commands: counter(&meter, "gwb_commands_total", "Write commands by kind and result (planned by the planner; applied, failed or skipped by the writer)."),
            ldap_duration: meter
                .f64_histogram("gwb_ldap_operation_duration_seconds")
                .with_description("LDAP operations by kind and result, with their duration; _count counts operations.")
                .with_boundaries(LDAP_BUCKETS.to_vec())
                .build(),
            members_written: counter(&meter, "gwb_members_written_total", "Member values added to or removed from AD groups."),
            skipped_members: meter
                .u64_gauge("gwb_skipped_members")
                .with_description("Members currently not written back, by reason (a level, not a rate: they are added once resolvable).")
                .build(),
            held_deletions: meter
                .u64_gauge("gwb_held_deletions")
                .with_description("Group deletions held back for an operator's decision.")
                .build(),
            held_member_removals: meter
                .u64_gauge("gwb_held_member_removals")
                .with_description("Member values the member-removal threshold keeps in AD until an operator decides.")
                .build(),
            name_clashes: meter
                .u64_gauge("gwb_name_clashes")
                .with_description("Written groups whose wanted name another AD object holds (written under the fallback name).")
                .build(),
            queue_lag: meter
                .f64_gauge("gwb_queue_lag_seconds")
                .with_description("Age (since publish) of the last message taken from each queue.")
                .build(),
            end_to_end: meter
                .f64_histogram("gwb_end_to_end_latency_seconds")
                .with_description("From a change being observed in Microsoft Graph to its AD write completing.")
                .with_boundaries(END_TO_END_BUCKETS.to_vec())
                .build(),
            dead_lettered: counter(&meter, "gwb_dead_lettered_total", "Messages a consumer rejected to the dead-letter queue, by source queue."),
            messages_published: counter(&meter, "gwb_messages_published_total", "Messages published with a broker confirm, by protobuf message kind."),
            messages_consumed: counter(&meter, "gwb_messages_consumed_total", "Messages handled, by queue and disposition (ack, dead_letter, requeue)."),
            drift_detected: counter(&meter, "gwb_drift_detected_total", "Differences between AD and the desired state found in the directory watcher's observations (AD edits), by kind."),
            drift_repaired: counter(&meter, "gwb_drift_repaired_total", "Drifted groups the planner planned a repair for (mode repair)."),
            contested_groups: meter
                .u64_gauge("gwb_drift_contested_groups")
                .with_description("Groups whose drift repairs stopped (the same drift came back too often, or moved out of the managed OUs) until an operator clears them.")
                .build(),
            drift_watch_operations: counter(&meter, "gwb_drift_watch_ldap_operations_total", "LDAP operations of the writer's directory watcher (its cost on the DC)."),
            _provider: provider,
        };
        Ok(Metrics { inner: Arc::new(inner) })
    }

    /// Builds the service's instruments and makes them the process-wide [`global`].
    /// A second call returns the first instance: there is one registry per process.
    pub fn install(service: &'static str) -> Result<Self, MetricsError> {
        if let Some(existing) = GLOBAL.get() {
            return Ok(existing.clone());
        }
        let metrics = Metrics::new(service)?;
        Ok(GLOBAL.get_or_init(|| metrics).clone())
    }

    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    /// `gwb_graph_requests_total{status}`: `Some(code)` for an HTTP response, `None`
    /// when the request failed without one (DNS, TLS, timeout).
    pub fn graph_request(&self, status: Option<u16>) {
        let status = status.map_or_else(|| "network_error".to_string(), |code| code.to_string());
        self.inner.graph_requests.add(1, &[KeyValue::new("status", status)]);
    }

    /// `gwb_events_published_total`: `n` change events confirmed by the broker.
    pub fn events_published(&self, n: u64) {
        self.inner.events_published.add(n, &[]);
    }

    /// `gwb_delta_rounds_total{resource,result}`, e.g. `("groups", "ok")`,
    /// `("users", "failed")`, `("groups", "resync")`.
    pub fn delta_round(&self, resource: &str, result: &str) {
        self.inner
            .delta_rounds
            .add(1, &[KeyValue::new("resource", resource.to_string()), KeyValue::new("result", result.to_string())]);
    }

    /// `gwb_commands_total{kind,result}`, e.g. `("add_members", "applied")`. Kinds are
    /// the command vocabulary's names; results `planned`, `applied`, `failed`, `skipped`.
    pub fn command(&self, kind: &str, result: &str) {
        self.inner
            .commands
            .add(1, &[KeyValue::new("kind", kind.to_string()), KeyValue::new("result", result.to_string())]);
    }

    /// `gwb_ldap_operation_duration_seconds{kind,result}`: one LDAP operation (`bind`,
    /// `search`, `add`, `modify`, `modify_dn`, `delete`) and its result (`ok` or an
    /// error class such as `busy`, `unavailable`, `refused`).
    pub fn ldap_operation(&self, kind: &str, result: &str, elapsed: Duration) {
        self.inner.ldap_duration.record(
            elapsed.as_secs_f64(),
            &[KeyValue::new("kind", kind.to_string()), KeyValue::new("result", result.to_string())],
        );
    }

    /// `gwb_drift_detected_total{kind}`: one difference of `kind` (`member_added`,
    /// `member_removed`, `attribute`, `renamed`, `moved`, `moved_out`, `deleted`).
    pub fn drift_detected(&self, kind: &str) {
        self.inner.drift_detected.add(1, &[KeyValue::new("kind", kind.to_string())]);
    }

    /// `gwb_drift_repaired_total`: `n` drifted groups with a repair planned.
    pub fn drift_repaired(&self, n: u64) {
        self.inner.drift_repaired.add(n, &[]);
    }

    /// `gwb_drift_contested_groups`: groups contested now.
    pub fn contested_groups(&self, n: u64) {
        self.inner.contested_groups.record(n, &[]);
    }

    /// `gwb_drift_watch_ldap_operations_total`: one LDAP operation of the watcher.
    pub fn drift_watch_operation(&self) {
        self.inner.drift_watch_operations.add(1, &[]);
    }

    /// `gwb_members_written_total`: `n` member values written to AD.
    pub fn members_written(&self, n: u64) {
        self.inner.members_written.add(n, &[]);
    }

    /// `gwb_skipped_members{reason}`: sets how many members are currently skipped for
    /// `reason`. A gauge because skips are a state the planner holds (they disappear
    /// when a member becomes resolvable), not a stream of events.
    pub fn skipped_members(&self, reason: &str, n: u64) {
        self.inner.skipped_members.record(n, &[KeyValue::new("reason", reason.to_string())]);
    }

    /// `gwb_held_deletions`: deletions currently waiting for an operator.
    pub fn held_deletions(&self, n: u64) {
        self.inner.held_deletions.record(n, &[]);
    }

    /// `gwb_held_member_removals`: member removals currently waiting for an operator.
    pub fn held_member_removals(&self, n: u64) {
        self.inner.held_member_removals.record(n, &[]);
    }

    /// `gwb_name_clashes`: written groups under their fallback name.
    pub fn name_clashes(&self, n: u64) {
        self.inner.name_clashes.record(n, &[]);
    }

    /// `gwb_queue_lag_seconds{queue}`: age of the message just taken from `queue`.
    /// Recorded by `gwb-bus` for every delivery.
    pub fn queue_lag(&self, queue: &str, lag: Duration) {
        self.inner.queue_lag.record(lag.as_secs_f64(), &[KeyValue::new("queue", queue.to_string())]);
    }

    /// `gwb_end_to_end_latency_seconds`: from Graph observation to AD write, recorded
    /// by the writer when a command's write completes.
    pub fn end_to_end_latency(&self, latency: Duration) {
        self.inner.end_to_end.record(latency.as_secs_f64(), &[]);
    }

    /// `gwb_dead_lettered_total{queue}`. Recorded by `gwb-bus` when a handler returns
    /// `DeadLetter`; messages the broker dead-letters at the delivery limit show up as
    /// the dead-letter queue's depth instead.
    pub fn dead_lettered(&self, queue: &str) {
        self.inner.dead_lettered.add(1, &[KeyValue::new("queue", queue.to_string())]);
    }

    /// `gwb_messages_published_total{kind}`: recorded by `gwb-bus` per confirmed message.
    pub fn messages_published(&self, kind: &str, n: u64) {
        self.inner.messages_published.add(n, &[KeyValue::new("kind", kind.to_string())]);
    }

    /// `gwb_messages_consumed_total{queue,disposition}`: recorded by `gwb-bus`.
    pub fn message_consumed(&self, queue: &str, disposition: &str) {
        self.inner.messages_consumed.add(
            1,
            &[KeyValue::new("queue", queue.to_string()), KeyValue::new("disposition", disposition.to_string())],
        );
    }

    /// What `/healthz` answers: 200 while healthy, 503 after `set_healthy(false)`
    /// (e.g. while the service cannot reach a dependency it cannot work without).
    pub fn set_healthy(&self, healthy: bool) {
        self.inner.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// The current values in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, MetricsError> {
        use prometheus::Encoder;
        let mut buffer = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.inner.registry.gather(), &mut buffer)
            .map_err(|e| MetricsError::Encode(e.to_string()))?;
        String::from_utf8(buffer).map_err(|e| MetricsError::Encode(e.to_string()))
    }
}

fn counter(meter: &Meter, name: &'static str, description: &'static str) -> Counter<u64> {
    meter.u64_counter(name).with_description(description).build()
}

/// Process metrics under the names Prometheus' own client libraries use, so standard
/// dashboards work. Read from `/proc/self` at scrape time; absent on other systems.
fn register_process_metrics(meter: &Meter) {
    if !std::path::Path::new("/proc/self/stat").exists() {
        return;
    }
    let _ = meter
        .f64_observable_counter("process_cpu_seconds_total")
        .with_description("User and system CPU time spent, in seconds.")
        .with_callback(|observer| {
            if let Some(stat) = proc_stat() {
                observer.observe((stat.utime + stat.stime) as f64 / CLOCK_TICKS, &[]);
            }
        })
        .build();
    let _ = meter
        .u64_observable_gauge("process_resident_memory_bytes")
        .with_description("Resident memory size in bytes.")
        .with_callback(|observer| {
            if let Some(bytes) = resident_bytes() {
                observer.observe(bytes, &[]);
            }
        })
        .build();
    let _ = meter
        .u64_observable_gauge("process_open_fds")
        .with_description("Open file descriptors.")
        .with_callback(|observer| {
            if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
                observer.observe(entries.count() as u64, &[]);
            }
        })
        .build();
    if let Some(start) = process_start_time() {
        let _ = meter
            .f64_observable_gauge("process_start_time_seconds")
            .with_description("Start time of the process since the Unix epoch, in seconds.")
            .with_callback(move |observer| observer.observe(start, &[]))
            .build();
    }
}

/// Linux reports `/proc/<pid>/stat` times in USER_HZ, which the kernel fixes at 100
/// for user space on every architecture we ship for (reading it would need libc).
const CLOCK_TICKS: f64 = 100.0;

struct ProcStat {
    utime: u64,
    stime: u64,
    starttime: u64,
}

fn proc_stat() -> Option<ProcStat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after the
    // last ')' are plain numbers. Field 3 (state) is the first of them.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat { utime: field(14)?, stime: field(15)?, starttime: field(22)? })
}

fn resident_bytes() -> Option<u64> {
    // VmRSS is in kB whatever the page size, unlike the page count in /proc/self/stat.
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn process_start_time() -> Option<f64> {
    let stat = proc_stat()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = boot.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(btime as f64 + stat.starttime as f64 / CLOCK_TICKS)
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`. The listener is
/// injected so callers (and tests) choose the address and learn the port first.
pub async fn serve(listener: TcpListener, metrics: Metrics, shutdown: Shutdown) -> Result<(), MetricsError> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.triggered().await })
        .await
        .map_err(MetricsError::Serve)
}

/// Binds `config.listen` (when set) and serves in a background task. Returns the bound
/// address; binding errors are returned here so a taken port stops the service at start.
pub async fn start(
    config: &MetricsConfig,
    metrics: &Metrics,
    shutdown: Shutdown,
) -> Result<Option<SocketAddr>, MetricsError> {
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    let listener = crate::listen::bind("metrics", "metrics.listen", addr).await?;
    let bound = listener.local_addr().map_err(MetricsError::Serve)?;
    let metrics = metrics.clone();
    tokio::spawn(async move {
        if let Err(error) = serve(listener, metrics, shutdown).await {
            tracing::error!(%error, "metrics server stopped");
        }
    });
    tracing::info!(listen = %bound, "serving /metrics and /healthz");
    Ok(Some(bound))
}

async fn metrics_handler(State(metrics): State<Metrics>) -> Response {
    match metrics.render() {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn health_handler(State(metrics): State<Metrics>) -> Response {
    if metrics.is_healthy() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n").into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn catalog_renders_prometheus_names_and_labels() {
        let metrics = Metrics::new("gwb-test").unwrap();
        metrics.graph_request(Some(200));
        metrics.graph_request(Some(200));
        metrics.graph_request(None);
        metrics.events_published(5);
        metrics.delta_round("groups", "ok");
        metrics.command("create_group", "applied");
        metrics.ldap_operation("add", "ok", Duration::from_millis(3));
        metrics.members_written(7);
        metrics.skipped_members("cloud_only_user", 2);
        metrics.skipped_members("cloud_only_user", 1);
        metrics.held_deletions(4);
        metrics.held_member_removals(150);
        metrics.name_clashes(2);
        metrics.queue_lag("gwb.events", Duration::from_millis(1500));
        metrics.end_to_end_latency(Duration::from_secs(2));
        metrics.dead_lettered("gwb.events");
        metrics.messages_published("gwb.events.v1.ChangeEvent", 3);
        metrics.message_consumed("gwb.events", "ack");
        let text = metrics.render().unwrap();
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            sample(&text, &format!("gwb_build_info{{service=\"gwb-test\",version=\"{version}\"}}")),
            Some(1.0),
            "{text}"
        );
        assert_eq!(sample(&text, "gwb_graph_requests_total{status=\"200\"}"), Some(2.0), "{text}");
        assert_eq!(sample(&text, "gwb_graph_requests_total{status=\"network_error\"}"), Some(1.0));
        assert_eq!(sample(&text, "gwb_events_published_total"), Some(5.0));
        assert_eq!(sample(&text, "gwb_delta_rounds_total{resource=\"groups\",result=\"ok\"}"), Some(1.0));
        assert_eq!(sample(&text, "gwb_commands_total{kind=\"create_group\",result=\"applied\"}"), Some(1.0));
        assert_eq!(
            sample(&text, "gwb_ldap_operation_duration_seconds_bucket{kind=\"add\",result=\"ok\",le=\"0.005\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "gwb_ldap_operation_duration_seconds_bucket{kind=\"add\",result=\"ok\",le=\"0.0025\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "gwb_members_written_total"), Some(7.0));
        // A gauge: the last value set wins.
        assert_eq!(sample(&text, "gwb_skipped_members{reason=\"cloud_only_user\"}"), Some(1.0));
        assert_eq!(sample(&text, "gwb_held_deletions"), Some(4.0));
        assert_eq!(sample(&text, "gwb_held_member_removals"), Some(150.0));
        assert_eq!(sample(&text, "gwb_name_clashes"), Some(2.0));
        assert_eq!(sample(&text, "gwb_queue_lag_seconds{queue=\"gwb.events\"}"), Some(1.5));
        assert_eq!(sample(&text, "gwb_end_to_end_latency_seconds_bucket{le=\"1800\"}"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "gwb_end_to_end_latency_seconds_bucket{le=\"1\"}"), Some(0.0));
        assert_eq!(sample(&text, "gwb_end_to_end_latency_seconds_sum"), Some(2.0));
        assert_eq!(sample(&text, "gwb_dead_lettered_total{queue=\"gwb.events\"}"), Some(1.0));
        assert_eq!(sample(&text, "gwb_messages_published_total{kind=\"gwb.events.v1.ChangeEvent\"}"), Some(3.0));
        assert_eq!(
            sample(&text, "gwb_messages_consumed_total{disposition=\"ack\",queue=\"gwb.events\"}"),
            Some(1.0),
            "{text}"
        );
        assert!(text.contains("# TYPE gwb_graph_requests_total counter"), "{text}");
        assert!(!text.contains("otel_scope"), "scope labels are off: {text}");
    }

    #[test]
    fn process_metrics_are_read_from_proc() {
        let text = Metrics::new("gwb-test").unwrap().render().unwrap();
        assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|v| v > 1_000_000.0), "{text}");
        assert!(sample(&text, "process_cpu_seconds_total").is_some(), "{text}");
        assert!(sample(&text, "process_open_fds").is_some_and(|v| v >= 3.0), "{text}");
        let start = sample(&text, "process_start_time_seconds").unwrap_or_default();
        let now = crate::clock::system_now_ms() as f64 / 1000.0;
        assert!(start > now - 3600.0 && start <= now + 1.0, "start {start} now {now}");
    }

    #[test]
    fn install_is_idempotent() {
        let first = Metrics::install("gwb-one").unwrap();
        let second = Metrics::install("gwb-two").unwrap();
        assert_eq!(first.service(), second.service());
        assert_eq!(global().map(Metrics::service), Some(first.service()));
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let config: MetricsConfig = toml::from_str("listen = \"0.0.0.0:9464\"").unwrap();
        assert_eq!(config.listen, Some(SocketAddr::from(([0, 0, 0, 0], 9464))));
        assert!(toml::from_str::<MetricsConfig>("port = 9464").is_err());
        assert_eq!(toml::from_str::<MetricsConfig>("").unwrap(), MetricsConfig::default());
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn server_serves_metrics_and_health_until_shutdown() {
        let metrics = Metrics::new("gwb-test").unwrap();
        metrics.events_published(1);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, shutdown) = crate::shutdown::channel();
        let server = tokio::spawn(serve(listener, metrics.clone(), shutdown));
        let page = get(addr, "/metrics").await;
        assert!(page.starts_with("HTTP/1.0 200") && page.contains("gwb_events_published_total 1"), "{page}");
        assert!(page.contains("text/plain; version=0.0.4"), "{page}");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.0 200"));
        metrics.set_healthy(false);
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.0 503"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.0 404"));
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn start_names_the_key_when_the_port_is_taken() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = MetricsConfig { listen: Some(taken.local_addr().unwrap()) };
        let (_trigger, shutdown) = crate::shutdown::channel();
        let error = start(&config, &Metrics::new("gwb-test").unwrap(), shutdown).await.unwrap_err();
        assert!(error.to_string().starts_with("metrics.listen 127.0.0.1:"), "{error}");
        let (_trigger, shutdown) = crate::shutdown::channel();
        assert_eq!(start(&MetricsConfig::default(), &Metrics::new("gwb-test").unwrap(), shutdown).await.unwrap(), None);
    }
}
