//! One delta round: follow links from the stored deltaLink (or the initial URL) to the
//! next deltaLink, publishing each page's events with confirms before reading on.

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message as _;

use gwb_bus::{Message, Publisher, Route};
use gwb_core::event::{Change, ChangeEvent, RoundBoundary};
use gwb_graph::{GraphClient, GraphError, PageLink, Resource};
use gwb_proto::events::v1 as pb;
use gwb_proto::message_types::EVENT_TYPE;
use gwb_runtime::clock::Clock;

use crate::cursor::CursorStore;
use crate::error::CollectorError;

pub struct Collector {
    graph: Arc<GraphClient>,
    publisher: Publisher,
    cursors: CursorStore,
    max_pages: u64,
    clock: Clock,
}

impl Collector {
    pub fn new(
        graph: Arc<GraphClient>,
        publisher: Publisher,
        cursors: CursorStore,
        max_pages: u64,
        clock: Clock,
    ) -> Self {
        Collector { graph, publisher, cursors, max_pages, clock }
    }

    /// Forgets every cursor, so the next rounds are full rounds (FullResync).
    pub fn forget_cursors(&self) -> Result<(), CollectorError> {
        for resource in Resource::ALL {
            self.cursors.forget(resource)?;
        }
        Ok(())
    }

    /// Runs one round of `resource` and returns how many changed objects it read. On
    /// `ResyncRequired` the cursor is dropped and the round restarts once as a full
    /// round; any other failure leaves the cursor where it was, so the next attempt
    /// re-reads (Graph replays are harmless downstream).
    pub async fn run_round(&mut self, resource: Resource) -> Result<usize, CollectorError> {
        let stored = self.cursors.delta_link(resource)?;
        let (url, full) = match stored {
            Some(link) => (link, false),
            None => (self.graph.initial_url(resource), true),
        };
        match self.follow(resource, url, full).await {
            Err(RoundFailure::Resync { reason, location }) => {
                tracing::warn!(resource = resource.path(), %reason, "delta token lost: starting a full round");
                self.cursors.forget(resource)?;
                let url = location.filter(|l| !l.is_empty()).unwrap_or_else(|| self.graph.initial_url(resource));
                self.follow(resource, url, true).await.map_err(RoundFailure::into_error)
            }
            other => other.map_err(RoundFailure::into_error),
        }
    }

    async fn follow(&mut self, resource: Resource, mut url: String, full: bool) -> Result<usize, RoundFailure> {
        let round_id = uuid::Uuid::new_v4().to_string();
        let mut position = 0u64;
        let mut visited = HashSet::new();
        let boundary = RoundBoundary { resource, full };
        if full {
            self.publish(
                &round_id,
                &mut position,
                self.clock.now_ms(),
                vec![Change::RoundStarted(boundary)],
                "full round started",
            )
            .await?;
        }
        let mut pages = 0u64;
        let mut objects = 0usize;
        loop {
            pages += 1;
            if pages > self.max_pages || !visited.insert(url.clone()) {
                return Err(RoundFailure::Other(CollectorError::Loop {
                    resource: resource.path(),
                    round_id,
                    page: pages,
                }));
            }
            let page = match self.graph.fetch_page(resource, &url).await {
                Ok(page) => page,
                Err(GraphError::ResyncRequired { reason, location }) => {
                    return Err(RoundFailure::Resync { reason, location });
                }
                Err(other) => return Err(RoundFailure::Other(other.into())),
            };
            let observed_at = self.clock.now_ms();
            objects += page.items.len();
            let changes: Vec<Change> = page.items.into_iter().map(|item| item.into_change(resource)).collect();
            let cause = format!("graph {}/delta round {round_id} page {pages}", resource.path());
            self.publish(&round_id, &mut position, observed_at, changes, &cause).await?;
            match page.link {
                PageLink::Next(next) => url = next,
                PageLink::Delta(delta) => {
                    self.publish(
                        &round_id,
                        &mut position,
                        self.clock.now_ms(),
                        vec![Change::RoundCompleted(boundary)],
                        "round completed",
                    )
                    .await?;
                    // Only now, with every event of the round confirmed, does the
                    // cursor move.
                    self.cursors
                        .save(resource, &delta, self.clock.now_ms())
                        .map_err(|e| RoundFailure::Other(e.into()))?;
                    if objects > 0 || full {
                        tracing::info!(resource = resource.path(), full, pages, objects, "delta round completed");
                    } else {
                        tracing::debug!(resource = resource.path(), pages, "delta round completed, no changes");
                    }
                    return Ok(objects);
                }
            }
        }
    }

    async fn publish(
        &self,
        round_id: &str,
        position: &mut u64,
        observed_at_ms: i64,
        changes: Vec<Change>,
        cause: &str,
    ) -> Result<(), RoundFailure> {
        if changes.is_empty() {
            return Ok(());
        }
        let batch: Vec<(Route, Message)> = changes
            .into_iter()
            .map(|change| {
                let event_id = uuid::Uuid::new_v4().to_string();
                let event = pb::ChangeEvent::from(ChangeEvent {
                    event_id: event_id.clone(),
                    cause: cause.to_string(),
                    observed_at_ms,
                    round_id: round_id.to_string(),
                    round_position: *position,
                    change,
                });
                *position += 1;
                let message = Message {
                    id: event_id,
                    kind: EVENT_TYPE,
                    payload: event.encode_to_vec(),
                    headers: Default::default(),
                    timestamp_ms: observed_at_ms,
                };
                (Route::Events, message)
            })
            .collect();
        let count = batch.len() as u64;
        self.publisher.publish_all(&batch).await.map_err(|e| RoundFailure::Other(e.into()))?;
        if let Some(metrics) = gwb_runtime::metrics::global() {
            metrics.events_published(count);
        }
        Ok(())
    }
}

enum RoundFailure {
    Resync { reason: String, location: Option<String> },
    Other(CollectorError),
}

impl RoundFailure {
    fn into_error(self) -> CollectorError {
        match self {
            RoundFailure::Resync { reason, .. } => CollectorError::ResyncLoop(reason),
            RoundFailure::Other(error) => error,
        }
    }
}
