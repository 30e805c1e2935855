//! Logging and tracing set-up shared by all services: `tracing` with an
//! `RUST_LOG`-style filter, human-readable by default, JSON lines when
//! `format = "json"`; OpenTelemetry spans exported over OTLP/gRPC when
//! `otlp_endpoint` is set; the W3C TraceContext propagator registered globally so
//! trace context crosses RabbitMQ in message headers (see [`inject_span`],
//! [`extract`]).
//!
//! The OpenTelemetry layer is installed even without an endpoint: spans then still get
//! trace and span ids, so a service that does not export keeps propagating the trace
//! it received instead of breaking it in two.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Deserializer};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The OpenTelemetry API, re-exported so services name `Context` and friends without
/// a dependency of their own (and always the same version as the runtime's).
pub use opentelemetry;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// Filter directives, e.g. `info,gwb_writer=debug`. `RUST_LOG` wins when set.
    #[serde(default = "default_filter")]
    pub filter: String,
    /// OTLP/gRPC collector receiving the traces, e.g. `http://otel-collector:4317`.
    /// Unset: spans are not exported (trace context is still propagated).
    #[serde(default, deserialize_with = "deserialize_endpoint")]
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_filter() -> String {
    "info".into()
}

/// Written by hand: a derived `Default` left the filter empty, so a service without a
/// `[log]` section logged errors only, not `info` as documented.
impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::default(), filter: default_filter(), otlp_endpoint: None }
    }
}

/// The filter directives in force: `RUST_LOG` when it says something, else the
/// configured filter, else `info`. An empty value (`RUST_LOG=` in a compose file or
/// a shell) means unset: taken literally it would show errors only.
fn filter_directives(env: Option<&str>, configured: &str) -> String {
    [env.unwrap_or_default(), configured]
        .into_iter()
        .map(str::trim)
        .find(|directives| !directives.is_empty())
        .unwrap_or("info")
        .to_string()
}

/// Refused at load time, naming the key, rather than failing when the first span is
/// exported: tonic needs a scheme to pick plain or TLS transport.
fn deserialize_endpoint<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(deserializer)?;
    match value {
        Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => Err(serde::de::Error::custom(
            format!("expected an http:// or https:// URL of an OTLP/gRPC endpoint, got {url:?}"),
        )),
        other => Ok(other),
    }
}

/// The provider is kept for [`flush_traces`]; one per process like the subscriber.
static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber (logs, and spans for OpenTelemetry) and the W3C
/// propagator. Call once, first thing in `main`, from inside the Tokio runtime (the
/// OTLP exporter's gRPC channel is created on it).
pub fn init_logging(service: &'static str, config: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (provider, export_error) = tracer_provider(service, config.otlp_endpoint.as_deref());
    let tracer = provider.tracer(service);
    let env = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let directives = filter_directives(env.as_deref(), &config.filter);
    let (filter, bad_filter) = match EnvFilter::try_new(&directives) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some((directives, error))),
    };
    let registry = tracing_subscriber::registry().with(filter).with(tracing_opentelemetry::layer().with_tracer(tracer));
    let result = match config.format {
        LogFormat::Json => {
            registry.with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_target(true)).try_init()
        }
        // Colours only on a terminal: `docker logs`, journald and log files get plain
        // text that grep and log shippers read.
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(true)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
            )
            .try_init(),
    };
    if result.is_ok() {
        let _ = TRACER_PROVIDER.set(provider);
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
        if let Some((directives, error)) = bad_filter {
            tracing::warn!(directives, %error, "log filter does not parse; logging at info");
        }
        match (export_error, &config.otlp_endpoint) {
            (Some(error), Some(endpoint)) => {
                tracing::error!(%error, endpoint, "log.otlp_endpoint: traces will not be exported")
            }
            (None, Some(endpoint)) => tracing::info!(endpoint, "exporting traces over OTLP"),
            _ => {}
        }
    }
}

fn tracer_provider(service: &'static str, endpoint: Option<&str>) -> (SdkTracerProvider, Option<String>) {
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = endpoint else {
        return (builder.build(), None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10));
    match exporter.build() {
        Ok(exporter) => (builder.with_batch_exporter(exporter).build(), None),
        Err(error) => (builder.build(), Some(error.to_string())),
    }
}

/// Exports the spans still buffered. Call before `main` returns; without it the last
/// few seconds of spans are lost at exit.
pub fn flush_traces() {
    if let Some(provider) = TRACER_PROVIDER.get()
        && let Err(error) = provider.shutdown()
    {
        tracing::warn!(%error, "flushing traces");
    }
}

/// W3C trace-context header names (<https://www.w3.org/TR/trace-context/>).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Writes `span`'s trace context into `headers` (`traceparent`, and `tracestate` when
/// the trace has one) with the global propagator. Does nothing when the span carries
/// no OpenTelemetry context (no subscriber installed, span disabled by the filter).
pub fn inject_span(span: &tracing::Span, headers: &mut BTreeMap<String, String>) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderMap(headers));
    });
}

/// [`inject_span`] for the current span.
pub fn inject_current(headers: &mut BTreeMap<String, String>) {
    inject_span(&tracing::Span::current(), headers);
}

/// The remote parent context carried by `headers`; an empty context when there is
/// none or it is malformed (a bad header must never fail message processing).
pub fn extract(headers: &BTreeMap<String, String>) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&HeaderView(headers)))
}

/// Makes `span` a child of the trace carried by `headers`. Call before the span is
/// first entered; a span whose parent was already fixed keeps it.
pub fn set_parent_from(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    let context = extract(headers);
    let _ = span.set_parent(context);
}

struct HeaderMap<'a>(&'a mut BTreeMap<String, String>);

impl Injector for HeaderMap<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct HeaderView<'a>(&'a BTreeMap<String, String>);

impl Extractor for HeaderView<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;
    use tracing_subscriber::layer::SubscriberExt;

    fn with_tracing<T>(f: impl FnOnce() -> T) -> T {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn inject_extract_round_trip() {
        with_tracing(|| {
            let span = tracing::info_span!("producer");
            let mut headers = BTreeMap::new();
            inject_span(&span, &mut headers);
            let traceparent = headers.get(TRACEPARENT).cloned().unwrap_or_default();
            let sent = span.context().span().span_context().clone();
            // version-traceid-spanid-flags, sampled.
            assert_eq!(traceparent, format!("00-{}-{}-01", sent.trace_id(), sent.span_id()));

            let parent = extract(&headers);
            assert_eq!(parent.span().span_context().trace_id(), sent.trace_id());
            assert!(parent.span().span_context().is_remote());

            let child = tracing::info_span!("consumer");
            set_parent_from(&child, &headers);
            let received = child.context().span().span_context().clone();
            assert_eq!(received.trace_id(), sent.trace_id());
            assert_ne!(received.span_id(), sent.span_id());
        });
    }

    #[test]
    fn garbage_or_missing_headers_give_an_empty_context() {
        with_tracing(|| {
            for headers in [BTreeMap::new(), BTreeMap::from([(TRACEPARENT.to_string(), "not-a-trace".to_string())])] {
                let context = extract(&headers);
                assert!(!context.span().span_context().is_valid());
                let span = tracing::info_span!("fresh");
                set_parent_from(&span, &headers);
                assert!(span.context().span().span_context().is_valid(), "a new root trace starts");
            }
        });
    }

    #[test]
    fn nothing_injected_without_a_subscriber() {
        let mut headers = BTreeMap::new();
        inject_current(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn otlp_endpoint_needs_a_scheme() {
        let config: LogConfig = toml::from_str("otlp_endpoint = \"http://collector:4317\"").unwrap();
        assert_eq!(config.otlp_endpoint.as_deref(), Some("http://collector:4317"));
        let error = toml::from_str::<LogConfig>("otlp_endpoint = \"collector:4317\"").unwrap_err();
        assert!(error.to_string().contains("http:// or https://"), "{error}");
        assert_eq!(toml::from_str::<LogConfig>("").unwrap().otlp_endpoint, None);
    }

    /// A service config without a `[log]` section logs at info, as the README says
    /// (failed before: the derived default filter was empty, which is errors only).
    #[test]
    fn without_a_log_section_the_filter_is_info() {
        #[derive(Deserialize)]
        struct Service {
            #[serde(default)]
            log: LogConfig,
        }
        let service: Service = toml::from_str("").unwrap();
        assert_eq!(filter_directives(None, &service.log.filter), "info");
        assert_eq!(LogConfig::default().filter, "info");
    }

    #[test]
    fn an_empty_rust_log_is_unset() {
        assert_eq!(filter_directives(Some(""), "warn"), "warn");
        assert_eq!(filter_directives(Some("  "), ""), "info");
        assert_eq!(filter_directives(Some("debug"), "warn"), "debug");
        assert_eq!(filter_directives(None, " "), "info");
    }
}
