//! One delta round: follow links from the stored deltaLink (or the initial URL) to the
//! next deltaLink, publishing each page's events with confirms before reading on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;

use gwb_bus::{Message, Publisher, Route};
use gwb_core::event::{Change, ChangeEvent, RoundBoundary};
use gwb_graph::{DeltaItem, GraphClient, GraphError, PageLink, Resource, WritebackSource};
use gwb_proto::events::v1 as pb;
use gwb_proto::message_types::EVENT_TYPE;
use gwb_runtime::clock::Clock;

use crate::cursor::{CursorStore, RoundProgress};
use crate::error::CollectorError;

pub struct Collector {
    graph: Arc<GraphClient>,
    publisher: Publisher,
    cursors: CursorStore,
    max_pages: u64,
    /// A page (with its retries) that takes longer abandons the round attempt; the
    /// round resumes at that page next time.
    page_timeout: Duration,
    clock: Clock,
}

impl Collector {
    pub fn new(
        graph: Arc<GraphClient>,
        publisher: Publisher,
        cursors: CursorStore,
        max_pages: u64,
        page_timeout: Duration,
        clock: Clock,
    ) -> Self {
        Collector { graph, publisher, cursors, max_pages, page_timeout, clock }
    }

    pub fn writeback_source(&self) -> WritebackSource {
        self.graph.writeback_source()
    }

    /// The Graph budget as `gwbctl status` shows it.
    pub fn budget_description(&self) -> String {
        match self.graph.budget_usage() {
            (_, _, 0) => "not paced (resource_units_per_10s = 0)".to_string(),
            (used, peak, limit) => {
                format!("{used} of {limit} resource units used in the last 10 s (peak {peak})")
            }
        }
    }

    /// Forgets every cursor, so the next rounds are full rounds (FullResync).
    pub fn forget_cursors(&self) -> Result<(), CollectorError> {
        for resource in Resource::ALL {
            self.cursors.forget(resource)?;
        }
        Ok(())
    }

    /// Runs one round of `resource` and returns how many changed objects it read.
    ///
    /// An unfinished round (a crash, a restart, a 503 burst past the retry budget)
    /// resumes at the first page whose events were not confirmed, with its round id, so
    /// a big tenant's first sync always finishes. On `ResyncRequired` the positions are
    /// dropped and the round restarts once as a full round; any other failure leaves
    /// them where they were, so the next attempt re-reads at most one page (Graph
    /// replays are harmless downstream).
    pub async fn run_round(&mut self, resource: Resource) -> Result<usize, CollectorError> {
        self.keep_writeback_source(resource)?;
        match self.run_round_once(resource).await {
            Err(RoundFailure::WritebackRefused(error)) => {
                // F8: the property is documented on the group, not in delta queries. Read
                // it per changed group instead; the changed query starts a full round.
                tracing::warn!(%error, "Graph refuses writebackConfiguration in the delta $select: reading it per changed group ($batch)");
                self.graph.read_writeback_per_group();
                self.run_round_once(resource).await.map_err(RoundFailure::into_error)
            }
            other => other.map_err(RoundFailure::into_error),
        }
    }

    /// A collector that switched to per-group reads before a restart goes on with them:
    /// its stored position was made by that query, and trying the refused one again
    /// would cost a full round each time.
    fn keep_writeback_source(&self, resource: Resource) -> Result<(), CollectorError> {
        if resource != Resource::Groups || self.graph.writeback_source() != WritebackSource::DeltaSelect {
            return Ok(());
        }
        let per_group = self.graph.initial_url_for(resource, WritebackSource::PerGroup);
        let stored = match self.cursors.progress(resource)? {
            Some(progress) => Some(progress.query),
            None => self.cursors.cursor(resource)?.and_then(|cursor| cursor.query),
        };
        if stored.as_deref() == Some(per_group.as_str()) {
            tracing::info!("writebackConfiguration is read per changed group, as before the restart");
            self.graph.read_writeback_per_group();
        }
        Ok(())
    }

    async fn run_round_once(&mut self, resource: Resource) -> Result<usize, RoundFailure> {
        let query = self.graph.initial_url(resource);
        let start = self.start(resource, &query).map_err(RoundFailure::Other)?;
        let resumed = !start.fresh;
        match self.follow(resource, start, &query).await {
            Err(RoundFailure::Resync { reason, location }) => {
                tracing::warn!(resource = resource.path(), %reason, "delta token lost: starting a full round");
                self.cursors.forget(resource).map_err(|e| RoundFailure::Other(e.into()))?;
                let url = location.filter(|l| !l.is_empty()).unwrap_or_else(|| query.clone());
                self.follow(resource, RoundStart::full(url), &query).await
            }
            Err(RoundFailure::Other(CollectorError::Graph(error @ GraphError::Rejected { .. }))) if resumed => {
                // Graph refuses the stored nextLink itself (e.g. it expired): resuming
                // again would fail the same way, so the round starts over next time.
                tracing::warn!(resource = resource.path(), %error, "the interrupted round cannot resume: it starts over");
                self.cursors.forget_progress(resource).map_err(|e| RoundFailure::Other(e.into()))?;
                Err(RoundFailure::Other(CollectorError::Graph(error)))
            }
            other => other,
        }
    }

    /// Where the next round of `resource` starts: the unfinished round, the stored
    /// deltaLink, or a full round when there is neither or the query has changed since.
    fn start(&self, resource: Resource, query: &str) -> Result<RoundStart, CollectorError> {
        if let Some(progress) = self.cursors.progress(resource)? {
            if progress.query == query {
                tracing::info!(
                    resource = resource.path(),
                    round_id = %progress.round_id,
                    pages = progress.pages,
                    full = progress.full,
                    "resuming the unfinished round at its first unconfirmed page"
                );
                return Ok(RoundStart::resume(progress));
            }
            tracing::warn!(
                resource = resource.path(),
                previous = %progress.query,
                current = %query,
                "the Graph query changed since the unfinished round started: starting a full round"
            );
            self.cursors.forget(resource)?;
            return Ok(RoundStart::full(query.to_string()));
        }
        Ok(match self.cursors.cursor(resource)? {
            Some(cursor) if cursor.query.as_deref().is_none_or(|previous| previous == query) => {
                RoundStart::incremental(cursor.delta_link)
            }
            Some(cursor) => {
                // A deltaLink answers the query it was made for: after a change of API
                // version, endpoint or $select it would hide what the new query adds.
                tracing::warn!(
                    resource = resource.path(),
                    previous = ?cursor.query,
                    current = %query,
                    "the Graph query changed since the cursor was stored (API version, endpoint or $select): starting a full round"
                );
                self.cursors.forget(resource)?;
                RoundStart::full(query.to_string())
            }
            None => RoundStart::full(query.to_string()),
        })
    }

    async fn follow(&mut self, resource: Resource, start: RoundStart, query: &str) -> Result<usize, RoundFailure> {
        let RoundStart { round_id, mut url, full, mut position, mut pages, fresh } = start;
        let mut visited = HashSet::new();
        let boundary = RoundBoundary { resource, full };
        if full && fresh {
            self.publish_now(&round_id, &mut position, Change::RoundStarted(boundary), "full round started").await?;
        }
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
            let fetched = tokio::time::timeout(self.page_timeout, self.graph.fetch_page(resource, &url)).await;
            let page = match fetched {
                Ok(Ok(page)) => page,
                Ok(Err(GraphError::ResyncRequired { reason, location })) => {
                    return Err(RoundFailure::Resync { reason, location });
                }
                Ok(Err(error)) if url == query && self.graph.refuses_writeback_select(&error) => {
                    return Err(RoundFailure::WritebackRefused(error));
                }
                Ok(Err(other)) => return Err(RoundFailure::Other(other.into())),
                Err(_) => {
                    return Err(RoundFailure::Other(CollectorError::PageStalled {
                        resource: resource.path(),
                        page: pages,
                        seconds: self.page_timeout.as_secs(),
                    }));
                }
            };
            let mut items = page.items;
            if !page.untyped_members.is_empty() {
                self.type_members(&mut items, &page.untyped_members)
                    .await
                    .map_err(|e| RoundFailure::Other(e.into()))?;
            }
            if resource == Resource::Groups && self.graph.writeback_source() == WritebackSource::PerGroup {
                self.add_writeback_configurations(&mut items).await.map_err(|e| RoundFailure::Other(e.into()))?;
            }
            let observed_at = self.clock.now_ms();
            objects += items.len();
            let changes: Vec<Change> = items.into_iter().map(|item| item.into_change(resource)).collect();
            let cause = format!("graph {}/delta round {round_id} page {pages}", resource.path());
            self.publish(&round_id, &mut position, observed_at, changes, &cause).await?;
            match page.link {
                PageLink::Next(next) => {
                    // Every event up to here is confirmed: a restart resumes at `next`.
                    let progress = RoundProgress {
                        round_id: round_id.clone(),
                        next_link: next.clone(),
                        full,
                        position,
                        pages,
                        query: query.to_string(),
                    };
                    self.cursors
                        .save_progress(resource, &progress, self.clock.now_ms())
                        .map_err(|e| RoundFailure::Other(e.into()))?;
                    url = next;
                }
                PageLink::Delta(delta) => {
                    self.publish_now(&round_id, &mut position, Change::RoundCompleted(boundary), "round completed")
                        .await?;
                    // Only now, with every event of the round confirmed, does the
                    // cursor move.
                    self.cursors
                        .complete(resource, &delta, query, self.clock.now_ms())
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

    /// Member links Graph sent without `@odata.type` get their kind from `getByIds`:
    /// a user read as "other" would be skipped silently (F21).
    async fn type_members(&self, items: &mut [DeltaItem], untyped: &[String]) -> Result<(), GraphError> {
        let kinds = self.graph.member_kinds(untyped).await?;
        tracing::info!(
            untyped = untyped.len(),
            resolved = kinds.len(),
            "member links without @odata.type resolved with getByIds"
        );
        for item in items.iter_mut() {
            if let DeltaItem::Group(group) = item {
                for link in group.members_added.iter_mut().chain(group.members_removed.iter_mut()) {
                    if let Some(kind) = kinds.get(&link.id.to_ascii_lowercase()) {
                        link.kind = *kind;
                    }
                }
            }
        }
        Ok(())
    }

    /// Fills in the changed groups' `writebackConfiguration`, read per group.
    async fn add_writeback_configurations(&self, items: &mut [DeltaItem]) -> Result<(), GraphError> {
        let ids: Vec<String> = items
            .iter()
            .filter_map(|item| match item {
                DeltaItem::Group(group) => Some(group.id.clone()),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut found = self.graph.writeback_configurations(&ids).await?;
        for item in items.iter_mut() {
            if let DeltaItem::Group(group) = item {
                group.writeback = found.remove(&group.id);
            }
        }
        Ok(())
    }

    /// One change observed now (a round boundary).
    async fn publish_now(
        &self,
        round_id: &str,
        position: &mut u64,
        change: Change,
        cause: &str,
    ) -> Result<(), RoundFailure> {
        self.publish(round_id, position, self.clock.now_ms(), vec![change], cause).await
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

/// Where a round begins: a new round (from a deltaLink, or a full round), or an
/// unfinished one resumed with its round id and counters.
struct RoundStart {
    round_id: String,
    url: String,
    full: bool,
    position: u64,
    pages: u64,
    /// False when resuming: `RoundStarted` was published already.
    fresh: bool,
}

impl RoundStart {
    fn full(url: String) -> Self {
        RoundStart { round_id: uuid::Uuid::new_v4().to_string(), url, full: true, position: 0, pages: 0, fresh: true }
    }

    fn incremental(delta_link: String) -> Self {
        RoundStart { full: false, ..RoundStart::full(delta_link) }
    }

    fn resume(progress: RoundProgress) -> Self {
        RoundStart {
            round_id: progress.round_id,
            url: progress.next_link,
            full: progress.full,
            position: progress.position,
            pages: progress.pages,
            fresh: false,
        }
    }
}

enum RoundFailure {
    Resync {
        reason: String,
        location: Option<String>,
    },
    /// Graph refused `writebackConfiguration` in the initial `$select`.
    WritebackRefused(GraphError),
    Other(CollectorError),
}

impl RoundFailure {
    fn into_error(self) -> CollectorError {
        match self {
            RoundFailure::Resync { reason, .. } => CollectorError::ResyncLoop(reason),
            RoundFailure::WritebackRefused(error) => CollectorError::Graph(error),
            RoundFailure::Other(error) => error,
        }
    }
}
