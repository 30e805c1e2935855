//! Trace context and queue metrics across the real RabbitMQ at 127.0.0.1:5672
//! (scripts/ensure-rabbitmq.sh starts it): a span on the publishing side becomes the
//! parent of the consumer's handling span, without either side doing anything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gwb_bus::{BusConfig, Disposition, Message, Publisher, Route, consume, delete_topology};
use gwb_runtime::telemetry::opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn one_trace_across_publish_and_consume() {
    gwb_runtime::telemetry::opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // Global, because the consumer runs on other runtime threads.
    tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in this test binary");
    let metrics = gwb_runtime::metrics::Metrics::install("gwb-bus-test").unwrap();

    let config = BusConfig {
        namespace: format!("gwbtest-trace-{}", uuid::Uuid::new_v4().simple()),
        command_partitions: 1,
        ..BusConfig::default()
    };
    let publisher =
        Publisher::connect(config.clone()).await.expect("RabbitMQ at 127.0.0.1:5672 (run scripts/ensure-rabbitmq.sh)");
    let round = tracing::info_span!("delta round");
    let sent = round.context().span().span_context().trace_id();
    let message =
        Message { id: "m1".into(), kind: "test.Kind", payload: vec![1], headers: BTreeMap::new(), timestamp_ms: 0 };
    {
        use tracing::Instrument;
        publisher.publish(&Route::Events, &message).instrument(round.clone()).await.expect("publish");
    }

    let seen: Arc<Mutex<Option<(TraceId, TraceId)>>> = Arc::new(Mutex::new(None));
    let sink = seen.clone();
    let (trigger, shutdown) = gwb_runtime::shutdown::channel();
    let queue = publisher.topology().events_queue();
    let task = tokio::spawn(consume(config.clone(), queue.clone(), shutdown, move |delivery| {
        let sink = sink.clone();
        async move {
            // The handler's own span is a child of the consumer span bus created.
            let work = tracing::info_span!("plan");
            let current = work.context().span().span_context().trace_id();
            *sink.lock().unwrap() = Some((delivery.trace_parent().span().span_context().trace_id(), current));
            Disposition::DeadLetter
        }
    }));
    for _ in 0..200 {
        if seen.lock().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    trigger.trigger();
    task.await.unwrap();
    delete_topology(&config).await.expect("clean-up");

    let (from_headers, in_handler) = seen.lock().unwrap().expect("message consumed");
    assert_eq!(from_headers, sent);
    assert_eq!(in_handler, sent, "work done in the handler belongs to the publisher's trace");

    let text = metrics.render().unwrap();
    for series in [
        "gwb_messages_published_total{kind=\"test.Kind\"} 1".to_string(),
        format!("gwb_messages_consumed_total{{disposition=\"dead_letter\",queue=\"{queue}\"}} 1"),
        format!("gwb_dead_lettered_total{{queue=\"{queue}\"}} 1"),
        format!("gwb_queue_lag_seconds{{queue=\"{queue}\"}} "),
    ] {
        assert!(text.contains(&series), "missing {series} in\n{text}");
    }
}
