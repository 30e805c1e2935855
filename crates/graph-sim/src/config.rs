//! Start-up configuration and the settings that the admin API can change at run time.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Seed;

/// How delta rounds are cut into pages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PagingConfig {
    /// Upper bound of objects on one page. Each page draws its size at random between
    /// `min_objects_per_page` and this, because Graph's page sizes vary.
    pub max_objects_per_page: usize,
    pub min_objects_per_page: usize,
    /// Members per `members@delta` slice; a larger membership repeats the group on the
    /// following pages, one slice each (graph-api.md §1.4).
    pub member_slice: usize,
    /// Insert an empty page (with a nextLink) after every n-th non-empty page.
    pub empty_page_every: Option<u32>,
    /// Return a round's objects in random order, as Graph promises no order.
    pub shuffle: bool,
    /// Time to serve one delta page, in milliseconds: real directory delta pages take
    /// hundreds of ms to seconds each (a big tenant's first round is thousands of them).
    pub page_delay_ms: u64,
}

impl Default for PagingConfig {
    fn default() -> Self {
        PagingConfig {
            max_objects_per_page: 100,
            min_objects_per_page: 50,
            member_slice: 500,
            empty_page_every: None,
            shuffle: true,
            page_delay_ms: 0,
        }
    }
}

impl PagingConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_objects_per_page == 0 || self.member_slice == 0 {
            return Err("maxObjectsPerPage and memberSlice must be at least 1".into());
        }
        if self.min_objects_per_page == 0 || self.min_objects_per_page > self.max_objects_per_page {
            return Err("minObjectsPerPage must be between 1 and maxObjectsPerPage".into());
        }
        if self.empty_page_every == Some(0) {
            return Err("emptyPageEvery must be at least 1 (or null)".into());
        }
        if self.page_delay_ms > 600_000 {
            return Err("pageDelayMs must be at most 600000".into());
        }
        Ok(())
    }
}

/// Configuration of one simulated tenant with one registered application.
#[derive(Clone)]
pub struct SimConfig {
    /// Directory (tenant) id accepted in `/{tenant}/oauth2/v2.0/token`.
    pub tenant_id: String,
    /// Application (client) id of the only registered app.
    pub client_id: String,
    pub client_secret: String,
    /// `expires_in` of issued access tokens (Entra: about an hour).
    pub token_lifetime: Duration,
    /// Age after which a deltaLink answers `syncStateNotFound` (Graph: 7 days).
    pub delta_token_lifetime: Duration,
    /// How long a round's pages stay available after the last page request.
    pub round_ttl: Duration,
    pub page: PagingConfig,
    /// Put soft-deleted objects into initial rounds as `@removed: changed`, which
    /// Graph documents as possible (graph-api.md §1.3).
    pub soft_deleted_in_initial_sync: bool,
    /// Scheme and authority for `@odata.*Link`s (e.g. `https://graph.example:8443`)
    /// when clients reach the simulator through a proxy; default: `http://{Host}`.
    pub public_url: Option<String>,
    /// Tenant content loaded before the listener accepts requests.
    pub seed: Option<Seed>,
    /// PEM certificates registered on the app for client assertions (more can be
    /// added through `POST /admin/certificates`).
    pub client_certificates: Vec<String>,
}

// Hand-written so that the secret never reaches a log line.
impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("token_lifetime", &self.token_lifetime)
            .field("delta_token_lifetime", &self.delta_token_lifetime)
            .field("round_ttl", &self.round_ttl)
            .field("page", &self.page)
            .field("soft_deleted_in_initial_sync", &self.soft_deleted_in_initial_sync)
            .field("public_url", &self.public_url)
            .field("client_certificates", &self.client_certificates.len())
            .field("seed", &self.seed.as_ref().map(|s| (s.users.len(), s.groups.len(), s.objects.len())))
            .finish()
    }
}

impl SimConfig {
    pub fn new(tenant_id: impl Into<String>, client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        SimConfig {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            ..SimConfig::default()
        }
    }
}

/// Fixed development identities, so that in-process tests need no setup.
impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            tenant_id: "00000000-0000-4000-8000-00000000000a".into(),
            client_id: "00000000-0000-4000-8000-00000000000c".into(),
            client_secret: "graph-sim-secret".into(),
            token_lifetime: Duration::from_secs(3599),
            delta_token_lifetime: Duration::from_secs(7 * 24 * 3600),
            round_ttl: Duration::from_secs(3600),
            page: PagingConfig::default(),
            soft_deleted_in_initial_sync: false,
            public_url: None,
            seed: None,
            client_certificates: Vec::new(),
        }
    }
}

/// How `@removed` annotations of deleted objects carry their reason. Graph documents
/// `changed` (soft-deleted, restorable) and `deleted` (permanently deleted); clients
/// must also cope with an annotation without a reason, or with a value added later.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RemovedReason {
    /// `{"reason": "changed"}` or `{"reason": "deleted"}`.
    #[default]
    Documented,
    /// `{}`: no reason at all.
    Omitted,
    /// `{"reason": "unknownFutureValue"}`, Graph's marker for an evolvable enum's new member.
    Unknown,
}

/// Settings readable and changeable through `GET`/`PATCH /admin/settings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub token_lifetime_secs: u64,
    pub delta_token_lifetime_ms: u64,
    pub round_ttl_secs: u64,
    pub paging: PagingConfig,
    pub soft_deleted_in_initial_sync: bool,
    #[serde(default)]
    pub removed_reason: RemovedReason,
    /// Refuse `writebackConfiguration` in a beta delta query's `$select` (400), as
    /// Graph may: it documents the property on the group, not in delta queries.
    #[serde(default)]
    pub refuse_writeback_in_delta: bool,
    /// `members@delta` entries without `@odata.type`, as Graph has sent them: clients
    /// must find the kind another way (`directoryObjects/getByIds`).
    #[serde(default)]
    pub omit_member_types: bool,
}

impl Settings {
    pub(crate) fn from_config(c: &SimConfig) -> Self {
        Settings {
            token_lifetime_secs: c.token_lifetime.as_secs(),
            delta_token_lifetime_ms: u64::try_from(c.delta_token_lifetime.as_millis()).unwrap_or(u64::MAX),
            round_ttl_secs: c.round_ttl.as_secs(),
            paging: c.page.clone(),
            soft_deleted_in_initial_sync: c.soft_deleted_in_initial_sync,
            removed_reason: RemovedReason::default(),
            refuse_writeback_in_delta: false,
            omit_member_types: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.token_lifetime_secs == 0 {
            return Err("tokenLifetimeSecs must be at least 1".into());
        }
        self.paging.validate()
    }
}

/// Partial update for `PATCH /admin/settings`; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_lifetime_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_token_lifetime_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paging: Option<PagingConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_deleted_in_initial_sync: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_reason: Option<RemovedReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse_writeback_in_delta: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omit_member_types: Option<bool>,
}

impl SettingsPatch {
    pub(crate) fn apply(&self, s: &Settings) -> Settings {
        Settings {
            token_lifetime_secs: self.token_lifetime_secs.unwrap_or(s.token_lifetime_secs),
            delta_token_lifetime_ms: self.delta_token_lifetime_ms.unwrap_or(s.delta_token_lifetime_ms),
            round_ttl_secs: self.round_ttl_secs.unwrap_or(s.round_ttl_secs),
            paging: self.paging.clone().unwrap_or_else(|| s.paging.clone()),
            soft_deleted_in_initial_sync: self.soft_deleted_in_initial_sync.unwrap_or(s.soft_deleted_in_initial_sync),
            removed_reason: self.removed_reason.unwrap_or(s.removed_reason),
            refuse_writeback_in_delta: self.refuse_writeback_in_delta.unwrap_or(s.refuse_writeback_in_delta),
            omit_member_types: self.omit_member_types.unwrap_or(s.omit_member_types),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret() {
        let c = SimConfig::new("t", "c", "very-secret");
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[test]
    fn paging_patch_fields_default() {
        let p: PagingConfig = serde_json::from_str(r#"{"memberSlice": 7}"#).unwrap();
        assert_eq!(p.member_slice, 7);
        assert_eq!(p.max_objects_per_page, PagingConfig::default().max_objects_per_page);
    }
}
