//! Graph change notifications as round triggers (graph-api.md §6): an HTTP receiver
//! (validation handshake, `clientState` check, lifecycle events) and the subscriptions
//! behind it (created at start, renewed before they expire, renewed again on
//! `reauthorizationRequired`). Notifications are only hints: the delta round they
//! trigger reads the actual changes, and polling continues in case they are lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use gwb_graph::{GraphClient, GraphError, MAX_SUBSCRIPTION_LIFETIME, NewSubscription};
use gwb_runtime::secret::Secret;
use gwb_runtime::shutdown::Shutdown;

use crate::Shared;
use crate::config::NotificationSettings;
use gwb_proto::auth::constant_time_eq;

/// Retry delay after a subscription could not be created or renewed.
const RETRY: Duration = Duration::from_secs(60);

/// A lifecycle event for the subscription manager.
#[derive(Debug)]
pub enum Lifecycle {
    /// `reauthorizationRequired`: renew now.
    Reauthorize(String),
    /// `subscriptionRemoved`: create it again.
    Removed(String),
}

#[derive(Clone)]
pub struct Receiver {
    shared: Shared,
    client_state: Arc<Secret>,
    lifecycle: mpsc::UnboundedSender<Lifecycle>,
}

impl Receiver {
    pub fn new(shared: Shared, client_state: Secret, lifecycle: mpsc::UnboundedSender<Lifecycle>) -> Self {
        Receiver { shared, client_state: Arc::new(client_state), lifecycle }
    }
}

pub async fn serve(listener: TcpListener, receiver: Receiver, shutdown: Shutdown) {
    let app =
        Router::new().route("/notifications", post(receive)).route("/lifecycle", post(receive)).with_state(receiver);
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%address, "change-notification receiver listening");
    if let Err(error) =
        axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.triggered().await }).await
    {
        tracing::error!(%error, "change-notification receiver stopped");
    }
}

/// One handler for both URLs: a validation request carries `validationToken`; a
/// delivery is a `value` array whose items are change notifications or, with
/// `lifecycleEvent`, lifecycle notifications.
async fn receive(
    State(receiver): State<Receiver>,
    Query(query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(token) = query.get("validationToken") {
        // Axum's query extractor has already URL-decoded the token, which is what
        // Graph expects back, as text/plain, within 10 seconds.
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token.clone()).into_response();
    }
    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Some(items) = parsed.get("value").and_then(Value::as_array) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let (mut changes, mut refused) = (0usize, 0usize);
    for item in items {
        let presented = item.get("clientState").and_then(Value::as_str).unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), receiver.client_state.expose().as_bytes()) {
            refused += 1;
            continue;
        }
        let subscription = item.get("subscriptionId").and_then(Value::as_str).unwrap_or("").to_string();
        match item.get("lifecycleEvent").and_then(Value::as_str) {
            Some(event) if event.eq_ignore_ascii_case("reauthorizationRequired") => {
                tracing::info!(%subscription, "lifecycle: reauthorization required");
                let _ = receiver.lifecycle.send(Lifecycle::Reauthorize(subscription));
            }
            Some(event) if event.eq_ignore_ascii_case("subscriptionRemoved") => {
                tracing::info!(%subscription, "lifecycle: subscription removed");
                let _ = receiver.lifecycle.send(Lifecycle::Removed(subscription));
                // Changes may have been missed meanwhile.
                changes += 1;
            }
            // `missed` (and anything new): changes were dropped; a round catches up.
            Some(event) => {
                tracing::info!(%subscription, event, "lifecycle notification");
                changes += 1;
            }
            None => changes += 1,
        }
    }
    if refused > 0 {
        // The presented value is never logged: it may be a near-miss of the secret.
        tracing::warn!(refused, "notifications with a wrong clientState ignored");
    }
    if changes > 0 {
        tracing::debug!(changes, "change notifications: requesting a round");
        receiver.shared.wake.notify_one();
    }
    StatusCode::ACCEPTED.into_response()
}

/// Keeps one subscription per configured resource alive.
pub struct Manager {
    graph: Arc<GraphClient>,
    settings: NotificationSettings,
    client_state: Secret,
    shared: Shared,
    lifetime: Duration,
    /// resource → (subscription id, expiration we asked for)
    active: HashMap<String, (String, SystemTime)>,
}

impl Manager {
    pub fn new(graph: Arc<GraphClient>, settings: NotificationSettings, client_state: Secret, shared: Shared) -> Self {
        let lifetime = Duration::from_secs(settings.subscription_minutes.max(1) * 60).min(MAX_SUBSCRIPTION_LIFETIME);
        Manager { graph, settings, client_state, shared, lifetime, active: HashMap::new() }
    }

    fn base_url(&self) -> &str {
        self.settings.public_url.trim_end_matches('/')
    }

    /// When a subscription is renewed: once a third of its lifetime is left.
    fn renew_at(&self, expiration: SystemTime) -> SystemTime {
        expiration.checked_sub(self.lifetime / 3).unwrap_or(expiration)
    }

    pub async fn run(mut self, mut lifecycle: mpsc::UnboundedReceiver<Lifecycle>, shutdown: Shutdown) {
        loop {
            let next = self.maintain().await;
            self.shared.status().notifications_active = self.active.len() == self.settings.resources.len();
            let wait = next.duration_since(self.shared.clock.now()).unwrap_or(Duration::ZERO);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                event = lifecycle.recv() => match event {
                    Some(Lifecycle::Reauthorize(id)) => {
                        if let Some((resource, _)) = self.active.iter().find(|(_, (sid, _))| *sid == id).map(|(r, v)| (r.clone(), v.clone())) {
                            self.renew(&resource, &id).await;
                        }
                    }
                    Some(Lifecycle::Removed(id)) => self.active.retain(|_, (sid, _)| *sid != id),
                    None => {}
                },
                () = shutdown.triggered() => break,
            }
        }
        // Best effort: subscriptions left behind expire on their own.
        for (resource, (id, _)) in std::mem::take(&mut self.active) {
            match tokio::time::timeout(Duration::from_secs(5), self.graph.delete_subscription(&id)).await {
                Ok(Ok(())) => tracing::info!(%resource, subscription = %id, "subscription deleted"),
                _ => tracing::debug!(%resource, subscription = %id, "subscription not deleted; it will expire"),
            }
        }
        self.shared.status().notifications_active = false;
    }

    /// Creates missing subscriptions and renews due ones; returns when to look again.
    async fn maintain(&mut self) -> SystemTime {
        let now = self.shared.clock.now();
        let mut next = now + self.lifetime;
        for resource in self.settings.resources.clone() {
            match self.active.get(&resource).cloned() {
                None => {
                    if !self.create(&resource).await {
                        next = next.min(now + RETRY);
                    }
                }
                Some((id, expiration)) if self.renew_at(expiration) <= now => {
                    if !self.renew(&resource, &id).await {
                        next = next.min(now + RETRY);
                    }
                }
                Some(_) => {}
            }
            if let Some((_, expiration)) = self.active.get(&resource) {
                next = next.min(self.renew_at(*expiration));
            }
        }
        next
    }

    async fn create(&mut self, resource: &str) -> bool {
        let expiration = self.shared.clock.now() + self.lifetime;
        let notification_url = format!("{}/notifications", self.base_url());
        let lifecycle_url = format!("{}/lifecycle", self.base_url());
        let request = NewSubscription {
            resource,
            change_type: "updated,deleted",
            notification_url: &notification_url,
            lifecycle_notification_url: Some(&lifecycle_url),
            client_state: &self.client_state,
            expiration,
        };
        match self.graph.create_subscription(&request).await {
            Ok(subscription) => {
                tracing::info!(resource, subscription = %subscription.id, expires = %subscription.expiration_date_time, "change-notification subscription created");
                self.active.insert(resource.to_string(), (subscription.id, expiration));
                true
            }
            Err(error) => {
                tracing::warn!(resource, %error, "cannot create a change-notification subscription; polling continues");
                let message = format!("subscription for {resource}: {error}");
                self.shared.status().last_error = message;
                false
            }
        }
    }

    async fn renew(&mut self, resource: &str, id: &str) -> bool {
        let expiration = self.shared.clock.now() + self.lifetime;
        match self.graph.renew_subscription(id, expiration).await {
            Ok(_) => {
                tracing::info!(resource, subscription = %id, "change-notification subscription renewed");
                self.active.insert(resource.to_string(), (id.to_string(), expiration));
                true
            }
            Err(GraphError::Rejected { status: 404, .. }) => {
                // Expired or deleted on Graph's side: create a new one.
                tracing::info!(resource, subscription = %id, "subscription is gone; creating a new one");
                self.active.remove(resource);
                self.create(resource).await
            }
            Err(error) => {
                tracing::warn!(resource, subscription = %id, %error, "cannot renew the change-notification subscription");
                false
            }
        }
    }
}
