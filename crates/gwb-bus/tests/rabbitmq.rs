//! Against the real RabbitMQ at 127.0.0.1:5672 (scripts/ensure-rabbitmq.sh starts it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gwb_bus::{BusConfig, Disposition, Message, Publisher, Route, consume, delete_topology};

fn config() -> BusConfig {
    BusConfig {
        namespace: format!("gwbtest-bus-{}", uuid::Uuid::new_v4().simple()),
        command_partitions: 2,
        delivery_limit: 3,
        ..BusConfig::default()
    }
}

fn message(n: u32) -> Message {
    Message {
        id: format!("m{n}"),
        kind: "test",
        payload: n.to_be_bytes().to_vec(),
        headers: BTreeMap::from([("traceparent".to_string(), format!("t{n}"))]),
        timestamp_ms: 0,
    }
}

async fn wait_for(condition: impl Fn() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn confirmed_messages_arrive_in_order_and_poison_is_dead_lettered() {
    let config = config();
    let publisher =
        Publisher::connect(config.clone()).await.expect("RabbitMQ at 127.0.0.1:5672 (run scripts/ensure-rabbitmq.sh)");
    let batch: Vec<_> = (0..500).map(|n| (Route::Events, message(n))).collect();
    publisher.publish_all(&batch).await.expect("publish");
    publisher
        .publish(&Route::Events, &Message { id: "poison".into(), payload: b"garbage".to_vec(), ..message(0) })
        .await
        .expect("publish poison");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let (trigger, shutdown) = gwb_runtime::shutdown::channel();
    let events_queue = publisher.topology().events_queue();
    let sink = seen.clone();
    let task = tokio::spawn(consume(config.clone(), events_queue, shutdown.clone(), move |delivery| {
        let sink = sink.clone();
        async move {
            if delivery.payload.len() != 4 {
                return Disposition::DeadLetter;
            }
            let n = u32::from_be_bytes([
                delivery.payload[0],
                delivery.payload[1],
                delivery.payload[2],
                delivery.payload[3],
            ]);
            assert_eq!(delivery.headers.get("traceparent"), Some(&format!("t{n}")));
            sink.lock().unwrap().push(n);
            Disposition::Ack
        }
    }));
    wait_for(|| seen.lock().unwrap().len() == 500).await;
    assert_eq!(*seen.lock().unwrap(), (0..500).collect::<Vec<_>>());

    let dead = Arc::new(Mutex::new(Vec::new()));
    let dead_sink = dead.clone();
    let dead_task =
        tokio::spawn(consume(config.clone(), publisher.topology().dead_letter_queue(), shutdown, move |delivery| {
            let sink = dead_sink.clone();
            async move {
                sink.lock().unwrap().push(delivery.message_id.clone().unwrap_or_default());
                Disposition::Ack
            }
        }));
    wait_for(|| !dead.lock().unwrap().is_empty()).await;
    assert_eq!(*dead.lock().unwrap(), vec!["poison".to_string()]);
    trigger.trigger();
    task.await.unwrap();
    dead_task.await.unwrap();
    delete_topology(&config).await.expect("clean-up");
}
