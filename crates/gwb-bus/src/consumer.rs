//! Supervised consumption: (re)connect with backoff, declare the topology, consume one
//! queue with bounded prefetch, hand each delivery to the handler *in order*, and
//! ack/reject after the handler's side effects are durable.
//!
//! Each handler call runs inside a consumer span whose parent is the trace context the
//! publisher put in the headers, so whatever the handler logs, spans or publishes
//! belongs to the trace of the cloud change that caused the message. Queue lag,
//! dispositions and dead letters are recorded in the process's installed metrics.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use tracing::Instrument;

use gwb_runtime::backoff::Backoff;
use gwb_runtime::clock::system_now_ms;
use gwb_runtime::shutdown::Shutdown;
use gwb_runtime::telemetry;
use gwb_runtime::telemetry::opentelemetry;

use crate::publisher::{PUBLISHED_AT_HEADER, connect};
use crate::{BusConfig, BusError, Topology};

/// A received message.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub payload: Vec<u8>,
    pub message_id: Option<String>,
    pub kind: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub redelivered: bool,
    /// Times the broker delivered it before (quorum queues' `x-delivery-count`).
    pub delivery_count: u64,
}

impl Delivery {
    /// The remote parent carried by the `traceparent`/`tracestate` headers (empty when
    /// absent or malformed). `consume` already parents its handler span with it; use
    /// this when the work happens elsewhere (e.g. a batch handled after the ack).
    pub fn trace_parent(&self) -> opentelemetry::Context {
        telemetry::extract(&self.headers)
    }

    /// Makes `span` a child of the publisher's span. Call before entering `span`.
    pub fn set_parent_of(&self, span: &tracing::Span) {
        telemetry::set_parent_from(span, &self.headers);
    }

    /// When the message was published (Unix ms), from the publisher's header.
    pub fn published_at_ms(&self) -> Option<i64> {
        self.headers.get(PUBLISHED_AT_HEADER)?.parse().ok()
    }

    /// How long the message waited between publish and now (zero if clocks disagree).
    pub fn queue_lag(&self) -> Option<Duration> {
        let published = self.published_at_ms()?;
        let waited = system_now_ms().saturating_sub(published).max(0);
        Some(Duration::from_millis(u64::try_from(waited).unwrap_or(0)))
    }
}

/// What to do with a delivery once the handler is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Processed (or already processed before): remove it.
    Ack,
    /// Cannot ever be processed (garbage, unknown version, impossible): move it to
    /// the dead-letter queue.
    DeadLetter,
    /// Could not be processed now; the broker redelivers it (counted against the
    /// delivery limit).
    Requeue,
}

impl Disposition {
    /// Label value of `gwb_messages_consumed_total{disposition}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Ack => "ack",
            Disposition::DeadLetter => "dead_letter",
            Disposition::Requeue => "requeue",
        }
    }
}

/// Consumes `queue` until shutdown, calling `handler` for one delivery at a time.
/// Connection errors are logged and retried with capped exponential backoff.
pub async fn consume<H, F>(config: BusConfig, queue: String, shutdown: Shutdown, mut handler: H)
where
    H: FnMut(Delivery) -> F,
    F: Future<Output = Disposition>,
{
    consume_batches(config, queue, shutdown, 1, Duration::ZERO, move |mut batch: Vec<Delivery>| {
        let work = batch.pop().map(&mut handler);
        async move {
            match work {
                Some(work) => vec![work.await],
                None => Vec::new(),
            }
        }
    })
    .await
}

async fn open_consumer(
    config: &BusConfig,
    topology: &Topology,
    queue: &str,
) -> Result<(lapin::Connection, lapin::Consumer), BusError> {
    let connection = connect(config).await?;
    let channel =
        connection.create_channel().await.map_err(|source| BusError::Amqp { operation: "channel.open", source })?;
    topology.declare(&channel).await?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .map_err(|source| BusError::Amqp { operation: "basic.qos", source })?;
    let tag = format!("{}-{}", queue, std::process::id());
    let consumer = channel
        .basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(|source| BusError::Amqp { operation: "basic.consume", source })?;
    tracing::info!(queue, "consuming");
    Ok((connection, consumer))
}

async fn settle(delivery: &lapin::message::Delivery, disposition: Disposition) -> Result<(), BusError> {
    let acker = &delivery.acker;
    let result = match disposition {
        Disposition::Ack => acker.ack(BasicAckOptions::default()).await,
        Disposition::DeadLetter => acker.reject(BasicRejectOptions { requeue: false }).await,
        Disposition::Requeue => acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await,
    };
    result.map(|_| ()).map_err(|source| BusError::Amqp { operation: "basic.ack", source })
}

/// Like [`consume`], but hands the handler every delivery already waiting (up to
/// `max_batch`, at least one) in queue order, and settles each with the disposition
/// at the same index. A handler can then amortise per-message costs (one commit or
/// one confirm round trip for the batch, merged directory writes) while keeping the
/// order. With a non-zero `linger`, a batch that is not full yet waits up to that long
/// for more deliveries: a consumer slightly faster than its producer would otherwise
/// pay its per-batch cost for every few messages.
pub async fn consume_batches<H, F>(
    config: BusConfig,
    queue: String,
    shutdown: Shutdown,
    max_batch: usize,
    linger: Duration,
    mut handler: H,
) where
    H: FnMut(Vec<Delivery>) -> F,
    F: Future<Output = Vec<Disposition>>,
{
    let topology = Topology::new(&config);
    let mut failures: u32 = 0;
    while !shutdown.is_triggered() {
        match consume_batches_once(&config, &topology, &queue, &shutdown, max_batch.max(1), linger, &mut handler).await
        {
            Ok(()) => return,
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = RECONNECT_BACKOFF.delay(failures);
                tracing::warn!(%error, queue, retry_in_ms = delay.as_millis() as u64, "consumer lost its connection");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.triggered() => return,
                }
            }
        }
    }
}

async fn consume_batches_once<H, F>(
    config: &BusConfig,
    topology: &Topology,
    queue: &str,
    shutdown: &Shutdown,
    max_batch: usize,
    linger: Duration,
    handler: &mut H,
) -> Result<(), BusError>
where
    H: FnMut(Vec<Delivery>) -> F,
    F: Future<Output = Vec<Disposition>>,
{
    use futures::FutureExt;
    let (connection, mut consumer) = open_consumer(config, topology, queue).await?;
    loop {
        let first = tokio::select! {
            next = consumer.next() => next,
            _ = shutdown.triggered() => {
                let _ = connection.close(200, "shutdown".into()).await;
                return Ok(());
            }
        };
        let Some(first) = first else {
            return Err(BusError::Timeout { operation: "consumer stream ended", seconds: 0 });
        };
        let mut raw = vec![first.map_err(|source| BusError::Amqp { operation: "basic.deliver", source })?];
        // Take what has already arrived (prefetched), then wait up to `linger` for more.
        let deadline = tokio::time::Instant::now() + linger;
        while raw.len() < max_batch {
            let next = match consumer.next().now_or_never() {
                Some(next) => next,
                None if linger.is_zero() => break,
                None => match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match next {
                Some(next) => raw.push(next.map_err(|source| BusError::Amqp { operation: "basic.deliver", source })?),
                None => break,
            }
        }
        let received: Vec<Delivery> = raw.iter().map(to_delivery).collect();
        let span = consumer_span(queue, &received[0]);
        if let Some(metrics) = gwb_runtime::metrics::global() {
            for delivery in &received {
                if let Some(lag) = delivery.queue_lag() {
                    metrics.queue_lag(queue, lag);
                }
            }
        }
        let count = received.len();
        let dispositions = span.in_scope(|| handler(received)).instrument(span.clone()).await;
        // A handler that answers for fewer deliveries leaves the rest to be retried.
        let disposition_of = |index: usize| dispositions.get(index).copied().unwrap_or(Disposition::Requeue);
        let all_acked = (0..raw.len()).all(|index| disposition_of(index) == Disposition::Ack);
        for (index, delivery) in raw.iter().enumerate() {
            let disposition = disposition_of(index);
            if let Some(metrics) = gwb_runtime::metrics::global() {
                metrics.message_consumed(queue, disposition.as_str());
                if disposition == Disposition::DeadLetter {
                    metrics.dead_lettered(queue);
                }
            }
            if !all_acked {
                settle(delivery, disposition).await?;
            }
        }
        if all_acked && let Some(last) = raw.last() {
            // One frame acknowledges the whole batch (deliveries up to this tag).
            last.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(|source| BusError::Amqp { operation: "basic.ack", source })?;
        }
        tracing::trace!(queue, count, "batch settled");
    }
}

/// The span a delivery is handled in: a child of the publisher's span.
pub(crate) fn consumer_span(queue: &str, delivery: &Delivery) -> tracing::Span {
    let span = tracing::info_span!(
        "amqp.consume",
        otel.name = format!("{queue} process"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.destination.name = queue,
        messaging.message.id = delivery.message_id.as_deref().unwrap_or_default(),
        messaging.rabbitmq.delivery_count = delivery.delivery_count,
        gwb.disposition = tracing::field::Empty,
    );
    delivery.set_parent_of(&span);
    span
}

fn to_delivery(delivery: &lapin::message::Delivery) -> Delivery {
    let properties = &delivery.properties;
    let (headers, delivery_count) = properties.headers().as_ref().map(read_headers).unwrap_or_default();
    Delivery {
        payload: delivery.data.clone(),
        message_id: properties.message_id().as_ref().map(|s| s.to_string()),
        kind: properties.kind().as_ref().map(|s| s.to_string()),
        headers,
        redelivered: delivery.redelivered,
        delivery_count,
    }
}

/// String headers, and the quorum queue's `x-delivery-count`.
pub(crate) fn read_headers(table: &FieldTable) -> (BTreeMap<String, String>, u64) {
    let mut headers = BTreeMap::new();
    let mut delivery_count = 0;
    for (name, value) in table.inner() {
        match value {
            AMQPValue::LongString(text) => {
                headers.insert(name.to_string(), text.to_string());
            }
            AMQPValue::ShortString(text) => {
                headers.insert(name.to_string(), text.to_string());
            }
            other if name.as_str() == "x-delivery-count" => {
                delivery_count = amqp_number(other).unwrap_or(0);
            }
            _ => {}
        }
    }
    (headers, delivery_count)
}

fn amqp_number(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        _ => None,
    }
}

/// Reconnection delays: what was 200 ms doubling to 10 s (from the first retry), each
/// within ±25 %, expressed as a ceiling of 250 ms doubling to 12.5 s cut by up to 40 %,
/// which is the same range [150 ms, 250 ms] · 2ⁿ⁻¹ up to [7.5 s, 12.5 s]. The jitter keeps
/// restarted services from reconnecting in lockstep.
const RECONNECT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_millis(12_500), 0.4);
