//! Confirmed publishing. A publish returns only when the broker has confirmed the
//! message (persisted to the quorum queue); a Nack, an unroutable return, a timeout or
//! a lost connection is an error and the caller keeps its data to publish again.
//!
//! Every message leaves with the publishing span's W3C trace context (`traceparent`,
//! `tracestate`) unless the caller set one already — the planner's outbox publishes
//! long after the event that caused a command, so it keeps that event's context and
//! passes it here — and with its publish time, from which consumers derive queue lag.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tracing::Instrument;

use gwb_runtime::clock::system_now_ms;
use gwb_runtime::telemetry;

use crate::{BusConfig, BusError, Route, Topology};

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    /// Protobuf message name, e.g. `gwb.events.v1.ChangeEvent`.
    pub kind: &'static str,
    pub payload: Vec<u8>,
    /// Extra headers (cause; W3C trace context when it must not be the current
    /// span's, see the module documentation).
    pub headers: BTreeMap<String, String>,
    pub timestamp_ms: i64,
}

struct Link {
    _connection: Connection,
    channel: Channel,
}

pub struct Publisher {
    config: BusConfig,
    topology: Topology,
    link: Mutex<Option<Link>>,
}

impl Publisher {
    /// Connects and declares the topology; fails fast if the broker is unreachable so
    /// a misconfigured service says so at start.
    pub async fn connect(config: BusConfig) -> Result<Self, BusError> {
        let topology = Topology::new(&config);
        let link = open_link(&config, &topology).await?;
        Ok(Publisher { config, topology, link: Mutex::new(Some(link)) })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(&self, route: &Route, message: &Message) -> Result<(), BusError> {
        self.publish_all(std::slice::from_ref(&(route.clone(), message.clone()))).await
    }

    /// Publishes every message, then waits for all confirms: one round trip per batch
    /// instead of per message. On error the whole batch must be considered unsent
    /// (some may have arrived: consumers are idempotent).
    pub async fn publish_all(&self, batch: &[(Route, Message)]) -> Result<(), BusError> {
        let span = tracing::info_span!(
            "amqp.publish",
            otel.name = "gwb publish",
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.batch.message_count = batch.len(),
        );
        self.publish_all_in(batch, &span).instrument(span.clone()).await
    }

    async fn publish_all_in(&self, batch: &[(Route, Message)], span: &tracing::Span) -> Result<(), BusError> {
        let mut guard = self.link.lock().await;
        if guard.is_none() {
            *guard = Some(open_link(&self.config, &self.topology).await?);
        }
        let Some(link) = guard.as_ref() else {
            return Err(BusError::Timeout { operation: "connect", seconds: 0 });
        };
        let result = self.publish_on(&link.channel, batch, span).await;
        if result.is_ok()
            && let Some(metrics) = gwb_runtime::metrics::global()
        {
            for (_, message) in batch {
                metrics.messages_published(message.kind, 1);
            }
        }
        if result.is_err() {
            // Rebuild the connection on the next call: a channel that saw an error may
            // be closed, and confirms are per channel.
            *guard = None;
        }
        result
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        batch: &[(Route, Message)],
        span: &tracing::Span,
    ) -> Result<(), BusError> {
        let mut pending = Vec::with_capacity(batch.len());
        let published_ms = system_now_ms();
        for (route, message) in batch {
            let (exchange, key) = self.topology.address(route);
            let confirm = channel
                .basic_publish(
                    exchange.clone().into(),
                    key.clone().into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    &message.payload,
                    properties(message, outgoing_headers(message, span, published_ms)),
                )
                .await
                .map_err(|source| BusError::Amqp { operation: "basic.publish", source })?;
            pending.push((format!("{exchange}/{key}"), confirm));
        }
        let timeout = Duration::from_secs(self.config.confirm_timeout_seconds);
        for (route, confirm) in pending {
            let confirmation = tokio::time::timeout(timeout, confirm)
                .await
                .map_err(|_| BusError::Timeout { operation: "publisher confirm", seconds: timeout.as_secs() })?
                .map_err(|source| BusError::Amqp { operation: "publisher confirm", source })?;
            match confirmation {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_returned)) => return Err(BusError::Unroutable { route }),
                Confirmation::Nack(_) | Confirmation::NotRequested => {
                    return Err(BusError::Nacked { route });
                }
            }
        }
        Ok(())
    }
}

/// Header carrying the publish time (Unix milliseconds); see [`crate::Delivery::queue_lag`].
pub const PUBLISHED_AT_HEADER: &str = "gwb-published-ms";

/// The message's own headers, plus the trace context of `span` (unless the caller
/// supplied one) and the publish time.
pub(crate) fn outgoing_headers(message: &Message, span: &tracing::Span, published_ms: i64) -> BTreeMap<String, String> {
    let mut headers = message.headers.clone();
    if !headers.contains_key(telemetry::TRACEPARENT) {
        telemetry::inject_span(span, &mut headers);
    }
    headers.insert(PUBLISHED_AT_HEADER.to_string(), published_ms.to_string());
    headers
}

fn properties(message: &Message, outgoing: BTreeMap<String, String>) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in &outgoing {
        headers.insert(ShortString::from(name.as_str()), AMQPValue::LongString(value.as_str().into()));
    }
    BasicProperties::default()
        .with_message_id(message.id.as_str().into())
        .with_type(message.kind.into())
        .with_content_type("application/protobuf".into())
        .with_delivery_mode(2)
        .with_timestamp(u64::try_from(message.timestamp_ms / 1000).unwrap_or(0))
        .with_headers(headers)
}

pub(crate) async fn connect(config: &BusConfig) -> Result<Connection, BusError> {
    Connection::connect(&config.url, ConnectionProperties::default())
        .await
        .map_err(|source| BusError::Connect { url: config.redacted_url(), source })
}

async fn open_link(config: &BusConfig, topology: &Topology) -> Result<Link, BusError> {
    let connection = connect(config).await?;
    let channel =
        connection.create_channel().await.map_err(|source| BusError::Amqp { operation: "channel.open", source })?;
    topology.declare(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|source| BusError::Amqp { operation: "confirm.select", source })?;
    Ok(Link { _connection: connection, channel })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Delivery;
    use crate::consumer::{consumer_span, read_headers};
    use gwb_runtime::telemetry::opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    fn with_tracing(f: impl FnOnce()) {
        gwb_runtime::telemetry::opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f);
    }

    fn message(headers: BTreeMap<String, String>) -> Message {
        Message { id: "m1".into(), kind: "test", payload: vec![1], headers, timestamp_ms: 0 }
    }

    /// What a consumer would receive: the headers go through lapin's AMQP field table.
    fn received(message: &Message, span: &tracing::Span) -> Delivery {
        let props = properties(message, outgoing_headers(message, span, system_now_ms() - 1500));
        let (headers, delivery_count) = props.headers().as_ref().map(read_headers).unwrap_or_default();
        Delivery {
            payload: message.payload.clone(),
            message_id: Some(message.id.clone()),
            kind: Some(message.kind.to_string()),
            headers,
            redelivered: false,
            delivery_count,
        }
    }

    #[test]
    fn trace_context_round_trips_through_amqp_headers() {
        with_tracing(|| {
            let producer = tracing::info_span!("collector round");
            let sent = producer.context().span().span_context().clone();
            let delivery = received(&message(BTreeMap::from([("cause".into(), "x".into())])), &producer);
            assert_eq!(delivery.headers.get("cause").map(String::as_str), Some("x"));
            assert_eq!(
                delivery.headers.get("traceparent"),
                Some(&format!("00-{}-{}-01", sent.trace_id(), sent.span_id()))
            );
            assert_eq!(delivery.trace_parent().span().span_context().trace_id(), sent.trace_id());

            let handling = consumer_span("gwb.events", &delivery);
            let context = handling.context();
            let child = context.span().span_context().clone();
            assert_eq!(child.trace_id(), sent.trace_id(), "the consumer span joins the producer's trace");
            assert_ne!(child.span_id(), sent.span_id());

            let lag = delivery.queue_lag().unwrap();
            assert!(
                lag >= std::time::Duration::from_millis(1500) && lag < std::time::Duration::from_secs(60),
                "{lag:?}"
            );
        });
    }

    #[test]
    fn caller_supplied_trace_context_is_kept() {
        with_tracing(|| {
            let stored = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string();
            let span = tracing::info_span!("outbox relay");
            let delivery = received(&message(BTreeMap::from([("traceparent".into(), stored.clone())])), &span);
            assert_eq!(delivery.headers.get("traceparent"), Some(&stored));
            assert_eq!(
                delivery.trace_parent().span().span_context().trace_id().to_string(),
                "0af7651916cd43dd8448eb211c80319c"
            );
        });
    }

    #[test]
    fn without_tracing_only_the_publish_time_is_added() {
        let delivery = received(&message(BTreeMap::new()), &tracing::Span::none());
        assert_eq!(delivery.headers.keys().collect::<Vec<_>>(), vec![PUBLISHED_AT_HEADER]);
        assert!(!delivery.trace_parent().span().span_context().is_valid());
    }
}
