//! The planner's consumers: change events (in batches, one transaction each) and the
//! writer's outcomes and status reports. Every store call runs in `spawn_blocking`.
//!
//! This is the planner's edge for events: each is decoded into the domain's
//! `ChangeEvent` (`gwb_proto::convert::events`) here, and planning sees nothing else.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::Notify;

use gwb_bus::{Delivery, Disposition};
use gwb_core::event::ChangeEvent;
use gwb_proto::commands::v1 as cmd;
use gwb_proto::events::v1 as ev;
use gwb_proto::message_types::{EVENT_TYPE, OBSERVATION_TYPE, OUTCOME_TYPE, WRITER_STATUS_TYPE};
use gwb_runtime::clock::Clock;

use crate::plan::{Incoming, Planned};
use crate::{SharedEngine, count_planned, origin, trace_of};

/// The domain event a delivery's payload stands for, or why it has none.
fn decode_event(payload: &[u8]) -> Result<ChangeEvent, String> {
    let wire = ev::ChangeEvent::decode(payload).map_err(|error| format!("undecodable: {error}"))?;
    ChangeEvent::try_from(wire).map_err(|error| error.to_string())
}

#[derive(Clone)]
pub(crate) struct Consumer {
    pub engine: SharedEngine,
    pub outbox_ready: Arc<Notify>,
    pub clock: Clock,
}

impl Consumer {
    /// Plans every event of a delivery batch in one transaction (see
    /// `Engine::apply_events`), each under a span parented by its own message's trace.
    pub async fn events(self, deliveries: Vec<Delivery>) -> Vec<Disposition> {
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
            match decode_event(&delivery.payload) {
                Ok(event) => {
                    let span = tracing::info_span!("plan_event", event_id = %event.event_id);
                    delivery.set_parent_of(&span);
                    let trace = trace_of(&span);
                    events.push(Incoming { event, span, trace });
                    indices.push(index);
                }
                Err(error) => {
                    tracing::error!(message_id = ?delivery.message_id, %error, "change event dead-lettered");
                    dispositions[index] = Disposition::DeadLetter;
                }
            }
        }
        if events.is_empty() {
            return dispositions;
        }
        let (engine, now_ms) = (self.engine.clone(), self.clock.now_ms());
        let result = tokio::task::spawn_blocking(move || {
            let mut engine = engine.lock().map_err(|_| "planner state lock poisoned".to_string())?;
            Ok::<_, String>(engine.apply_events(&events, now_ms))
        })
        .await;
        let (applied, failure) = match result {
            Ok(Ok(applied)) => {
                count_planned(&applied.planned);
                (applied.events, applied.failure.map(|e| e.to_string()))
            }
            Ok(Err(error)) => (0, Some(error)),
            Err(error) => (0, Some(error.to_string())),
        };
        for &index in &indices[..applied] {
            dispositions[index] = Disposition::Ack;
        }
        if applied > 0 {
            self.outbox_ready.notify_one();
        }
        if let Some(error) = failure {
            // It and the events after it stay Requeue: redelivered in order.
            tracing::error!(%error, applied, "applying a change event failed; it and the events after it will be redelivered");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        dispositions
    }

    pub async fn outcome(self, delivery: Delivery) -> Disposition {
        let kind = delivery.kind.clone().unwrap_or_default();
        if kind != OUTCOME_TYPE && kind != WRITER_STATUS_TYPE && kind != OBSERVATION_TYPE {
            tracing::error!(message_id = ?delivery.message_id, %kind, "outcome of an unknown type or version dead-lettered");
            return Disposition::DeadLetter;
        }
        let payload = delivery.payload;
        let (engine, origin) = (self.engine.clone(), origin(self.clock.now_ms(), &tracing::Span::current()));
        let result = tokio::task::spawn_blocking(move || -> Result<Option<Planned>, String> {
            let mut engine = engine.lock().map_err(|_| "planner state lock poisoned".to_string())?;
            let planned = if kind == OBSERVATION_TYPE {
                let Ok(wire) = cmd::DirectoryObservation::decode(payload.as_slice()) else { return Ok(None) };
                let observation = match gwb_core::drift::Observation::try_from(&wire) {
                    Ok(observation) => observation,
                    Err(error) => {
                        tracing::error!(%error, "directory observation refused");
                        return Ok(None);
                    }
                };
                engine.apply_observation(&observation, &origin)
            } else if kind == WRITER_STATUS_TYPE {
                let Ok(status) = cmd::WriterStatus::decode(payload.as_slice()) else { return Ok(None) };
                engine.apply_writer_status(&status, &origin)
            } else {
                let Ok(outcome) = cmd::Outcome::decode(payload.as_slice()) else { return Ok(None) };
                if outcome.command_id.is_empty() {
                    return Ok(None);
                }
                engine.apply_outcome(&outcome, &origin)
            };
            planned.map(Some).map_err(|e| e.to_string())
        })
        .await;
        match result {
            Ok(Ok(Some(planned))) => {
                count_planned(&planned);
                self.outbox_ready.notify_one();
                Disposition::Ack
            }
            Ok(Ok(None)) => {
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
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use gwb_core::event::{Change, ObjectRemoved, RemovalReason};

    use super::*;

    fn wire(change: Option<ev::change_event::Change>) -> Vec<u8> {
        ev::ChangeEvent { event_id: "e1".into(), round_id: "r1".into(), change, ..Default::default() }.encode_to_vec()
    }

    #[test]
    fn an_event_is_decoded_into_the_domain_at_the_edge() {
        let removed = ev::ObjectRemoved { id: "g1".into(), reason: ev::RemovalReason::Deleted as i32 };
        let event = decode_event(&wire(Some(ev::change_event::Change::GroupRemoved(removed)))).unwrap();
        assert_eq!(
            event.change,
            Change::GroupRemoved(ObjectRemoved { id: "g1".into(), reason: RemovalReason::Deleted })
        );
        // An unset reason is a soft removal (issue 14 F7): only "deleted" is permanent.
        let unset = ev::ObjectRemoved { id: "g1".into(), reason: 0 };
        let event = decode_event(&wire(Some(ev::change_event::Change::GroupRemoved(unset)))).unwrap();
        assert_eq!(
            event.change,
            Change::GroupRemoved(ObjectRemoved { id: "g1".into(), reason: RemovalReason::Changed })
        );
    }

    #[test]
    fn an_event_without_meaning_is_refused_with_its_reason() {
        assert!(decode_event(b"\xff\xff\xff").unwrap_err().starts_with("undecodable"));
        assert_eq!(decode_event(&wire(None)).unwrap_err(), "the event carries no change");
        let unknown = ev::RoundBoundary { resource: 7, full: true };
        let error = decode_event(&wire(Some(ev::change_event::Change::RoundStarted(unknown)))).unwrap_err();
        assert!(error.contains("no known resource (7)"), "{error}");
        let mut anonymous = ev::ChangeEvent::decode(
            wire(Some(ev::change_event::Change::UserRemoved(ev::ObjectRemoved { id: "u1".into(), reason: 0 })))
                .as_slice(),
        )
        .unwrap();
        anonymous.event_id.clear();
        assert_eq!(decode_event(&anonymous.encode_to_vec()).unwrap_err(), "the event has no event_id");
    }
}
