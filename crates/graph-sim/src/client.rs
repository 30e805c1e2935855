//! Typed client for the admin API, so that tests and the demo never build JSON by hand.

use std::sync::Once;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::assertion::RegisteredCertificate;
use crate::config::{Settings, SettingsPatch};
use crate::faults::FaultRule;
use crate::model::{
    Committed, GenerateResult, GenerateSpec, GroupFields, GroupMutation, GroupView, IdList, MembersMutation,
    NewDirectoryObject, NewGroup, NewUser, ObjectMutation, Seed, SeedResult, Stats, UserFields, UserMutation, UserView,
};
use crate::subscriptions::SubscriptionView;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The simulator refused the request (`error.code`/`error.message` of its body).
    #[error("graph-sim answered {status}: {code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("unexpected admin response: {0}")]
    Decode(String),
}

impl AdminError {
    /// HTTP status of an `Api` error.
    pub fn status(&self) -> Option<u16> {
        match self {
            AdminError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The workspace builds reqwest with rustls but without a default crypto provider,
/// and a client cannot be built until one is installed.
pub(crate) fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[derive(Clone, Debug)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
}

/// Serializes `set` and adds `null` for each property named in `clear`.
fn patch_body<T: Serialize>(set: &T, clear: &[&str]) -> Result<Value, AdminError> {
    let mut map = match serde_json::to_value(set).map_err(|e| AdminError::Decode(e.to_string()))? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for name in clear {
        map.insert((*name).to_owned(), Value::Null);
    }
    Ok(Value::Object(map))
}

impl AdminClient {
    /// `base_url` is the simulator's root, e.g. `http://127.0.0.1:8600`.
    pub fn new(base_url: impl Into<String>) -> Result<Self, AdminError> {
        ensure_crypto_provider();
        // A hung simulator must fail a test, not hang it. Generating a big tenant
        // (millions of links) takes minutes, hence the generous limit.
        let http = reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_secs(600)).build()?;
        Ok(AdminClient { http, base: base_url.into().trim_end_matches('/').to_owned() })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, AdminError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| AdminError::Decode(format!("{e} in {path} response")));
        }
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let field = |k: &str| v["error"][k].as_str().map(str::to_owned);
        Err(AdminError::Api {
            status: status.as_u16(),
            code: field("code").unwrap_or_else(|| status_text(status)),
            message: field("message").unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
        })
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, AdminError> {
        let value = serde_json::to_value(body).map_err(|e| AdminError::Decode(e.to_string()))?;
        self.call(method, path, Some(&value)).await
    }

    pub async fn create_user(&self, user: &NewUser) -> Result<UserMutation, AdminError> {
        self.send(Method::POST, "/admin/users", user).await
    }

    /// Sets the given fields and nulls the properties named in `clear`.
    pub async fn update_user(&self, id: Uuid, set: &UserFields, clear: &[&str]) -> Result<UserMutation, AdminError> {
        self.send(Method::PATCH, &format!("/admin/users/{id}"), &patch_body(set, clear)?).await
    }

    /// Soft delete (restorable), or hard delete with `permanent`.
    pub async fn delete_user(&self, id: Uuid, permanent: bool) -> Result<Committed, AdminError> {
        self.call(Method::DELETE, &format!("/admin/users/{id}?permanent={permanent}"), None).await
    }

    pub async fn restore_user(&self, id: Uuid) -> Result<UserMutation, AdminError> {
        self.call(Method::POST, &format!("/admin/users/{id}/restore"), None).await
    }

    pub async fn get_user(&self, id: Uuid) -> Result<UserView, AdminError> {
        self.call(Method::GET, &format!("/admin/users/{id}"), None).await
    }

    pub async fn create_group(&self, group: &NewGroup) -> Result<GroupMutation, AdminError> {
        self.send(Method::POST, "/admin/groups", group).await
    }

    /// Sets the given fields and nulls the properties named in `clear`.
    pub async fn update_group(&self, id: Uuid, set: &GroupFields, clear: &[&str]) -> Result<GroupMutation, AdminError> {
        self.send(Method::PATCH, &format!("/admin/groups/{id}"), &patch_body(set, clear)?).await
    }

    /// Microsoft 365 groups are soft-deleted unless `permanent`; other groups are
    /// always hard-deleted.
    pub async fn delete_group(&self, id: Uuid, permanent: bool) -> Result<Committed, AdminError> {
        self.call(Method::DELETE, &format!("/admin/groups/{id}?permanent={permanent}"), None).await
    }

    pub async fn restore_group(&self, id: Uuid) -> Result<GroupMutation, AdminError> {
        self.call(Method::POST, &format!("/admin/groups/{id}/restore"), None).await
    }

    pub async fn get_group(&self, id: Uuid, include_members: bool) -> Result<GroupView, AdminError> {
        self.call(Method::GET, &format!("/admin/groups/{id}?includeMembers={include_members}"), None).await
    }

    pub async fn add_members(&self, group: Uuid, ids: &[Uuid]) -> Result<MembersMutation, AdminError> {
        self.send(Method::POST, &format!("/admin/groups/{group}/members"), &IdList { ids: ids.to_vec() }).await
    }

    /// Fails with 404 if `member` is not a member.
    pub async fn remove_member(&self, group: Uuid, member: Uuid) -> Result<MembersMutation, AdminError> {
        self.call(Method::DELETE, &format!("/admin/groups/{group}/members/{member}"), None).await
    }

    /// Ids that are not members are counted as `unchanged`.
    pub async fn remove_members(&self, group: Uuid, ids: &[Uuid]) -> Result<MembersMutation, AdminError> {
        self.send(Method::POST, &format!("/admin/groups/{group}/members/remove"), &IdList { ids: ids.to_vec() }).await
    }

    /// A device, service principal, contact or application (for membership tests).
    pub async fn create_object(&self, object: &NewDirectoryObject) -> Result<ObjectMutation, AdminError> {
        self.send(Method::POST, "/admin/objects", object).await
    }

    /// Hard-deletes a device, service principal, contact or application.
    pub async fn delete_object(&self, id: Uuid) -> Result<Committed, AdminError> {
        self.call(Method::DELETE, &format!("/admin/objects/{id}"), None).await
    }

    pub async fn stats(&self) -> Result<Stats, AdminError> {
        self.call(Method::GET, "/admin/stats", None).await
    }

    pub async fn seed(&self, seed: &Seed) -> Result<SeedResult, AdminError> {
        self.send(Method::POST, "/admin/seed", seed).await
    }

    pub async fn generate(&self, spec: &GenerateSpec) -> Result<GenerateResult, AdminError> {
        self.send(Method::POST, "/admin/generate", spec).await
    }

    /// Appends rules to the fault queue and returns the whole queue.
    pub async fn add_faults(&self, rules: &[FaultRule]) -> Result<Vec<FaultRule>, AdminError> {
        self.send(Method::POST, "/admin/faults", &rules).await
    }

    /// The rules still queued, with their remaining counts.
    pub async fn faults(&self) -> Result<Vec<FaultRule>, AdminError> {
        self.call(Method::GET, "/admin/faults", None).await
    }

    pub async fn clear_faults(&self) -> Result<(), AdminError> {
        self.call::<Vec<FaultRule>>(Method::DELETE, "/admin/faults", None).await.map(drop)
    }

    pub async fn settings(&self) -> Result<Settings, AdminError> {
        self.call(Method::GET, "/admin/settings", None).await
    }

    pub async fn update_settings(&self, patch: &SettingsPatch) -> Result<Settings, AdminError> {
        self.send(Method::PATCH, "/admin/settings", patch).await
    }

    /// Registers a PEM certificate on the app for client assertions.
    pub async fn register_certificate(&self, pem: &str) -> Result<RegisteredCertificate, AdminError> {
        self.send(Method::POST, "/admin/certificates", &serde_json::json!({ "pem": pem })).await
    }

    /// The app's change-notification subscriptions that have not expired.
    pub async fn subscriptions(&self) -> Result<Vec<SubscriptionView>, AdminError> {
        self.call(Method::GET, "/admin/subscriptions", None).await
    }

    /// Sends a lifecycle notification (`reauthorizationRequired`, …) for subscription
    /// `id` now; true when its lifecycle URL accepted it.
    pub async fn send_lifecycle_notification(&self, id: Uuid, lifecycle_event: &str) -> Result<bool, AdminError> {
        let body = serde_json::json!({ "lifecycleEvent": lifecycle_event });
        let answer: Value = self.send(Method::POST, &format!("/admin/subscriptions/{id}/lifecycle"), &body).await?;
        Ok(answer["delivered"].as_bool().unwrap_or(false))
    }

    /// Empties the tenant; earlier delta tokens then answer `syncStateNotFound`.
    pub async fn reset(&self) -> Result<Committed, AdminError> {
        self.call(Method::POST, "/admin/reset", None).await
    }
}

fn status_text(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("error").to_owned()
}
