//! JSON types of the admin API, shared by the server and [`crate::AdminClient`].
//! Field names are Graph's camelCase property names.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// User properties the simulator stores (graph-api.md §4). `None` = not given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_principal_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_premises_security_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_premises_sync_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_premises_distinguished_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_premises_sam_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_premises_domain_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_premises_immutable_id: Option<String>,
}

/// Beta `group.writebackConfiguration`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WritebackConfiguration {
    #[serde(default)]
    pub is_enabled: Option<bool>,
    /// `universalDistributionGroup`, `universalSecurityGroup` or
    /// `universalMailEnabledSecurityGroup`.
    #[serde(default)]
    pub on_premises_group_type: Option<String>,
}

/// Group properties the simulator stores (graph-api.md §3). `None` = not given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_nickname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_addresses: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_premises_sync_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_premises_security_identifier: Option<String>,
    /// Derived from the id (`S-1-12-1-…`) when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<String>,
    /// Set to the creation instant when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writeback_configuration: Option<WritebackConfiguration>,
}

/// Body of `POST /admin/users`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewUser {
    /// Random GUID when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(flatten)]
    pub fields: UserFields,
}

/// Body of `POST /admin/groups`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewGroup {
    /// Random GUID when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(flatten)]
    pub fields: GroupFields,
    /// Initial members (users, groups or other directory objects).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Uuid>,
}

/// Directory object types that can be group members (the `DerivedTypeConstraint` of
/// `group.members`). Only users and groups have delta endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ObjectKind {
    User,
    Group,
    Device,
    ServicePrincipal,
    OrgContact,
    Application,
}

impl ObjectKind {
    /// `#microsoft.graph.user` etc., as used in `members@delta`.
    pub fn odata_type(self) -> &'static str {
        match self {
            ObjectKind::User => "#microsoft.graph.user",
            ObjectKind::Group => "#microsoft.graph.group",
            ObjectKind::Device => "#microsoft.graph.device",
            ObjectKind::ServicePrincipal => "#microsoft.graph.servicePrincipal",
            ObjectKind::OrgContact => "#microsoft.graph.orgContact",
            ObjectKind::Application => "#microsoft.graph.application",
        }
    }
}

/// Body of `POST /admin/objects`: a non-user, non-group directory object, so that
/// tests can put devices, contacts and service principals into groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewDirectoryObject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    pub kind: ObjectKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ObjectState {
    Active,
    /// In deletedItems: restorable.
    SoftDeleted,
}

/// `GET /admin/users/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: Uuid,
    pub state: ObjectState,
    #[serde(flatten)]
    pub fields: UserFields,
}

/// One member link as the admin API reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRef {
    pub id: Uuid,
    pub kind: ObjectKind,
}

/// `GET /admin/groups/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    pub id: Uuid,
    pub state: ObjectState,
    #[serde(flatten)]
    pub fields: GroupFields,
    pub member_count: usize,
    /// Present with `?includeMembers=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<MemberRef>>,
}

/// The tenant version a mutation produced and when it was committed, so that a
/// benchmark can measure the latency from a change to its effect downstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Committed {
    pub version: u64,
    /// Unix milliseconds.
    pub committed_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserMutation {
    pub version: u64,
    pub committed_at_ms: u64,
    pub user: UserView,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMutation {
    pub version: u64,
    pub committed_at_ms: u64,
    pub group: GroupView,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMutation {
    pub version: u64,
    pub committed_at_ms: u64,
    pub id: Uuid,
    pub kind: ObjectKind,
}

/// Result of a membership change: `changed` links were added or removed; the rest
/// were already in the requested state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembersMutation {
    pub version: u64,
    pub committed_at_ms: u64,
    pub changed: usize,
    pub unchanged: usize,
}

/// Body of `POST /admin/groups/{id}/members` and `…/members/remove`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IdList {
    pub ids: Vec<Uuid>,
}

/// A whole tenant for `POST /admin/seed` and `--seed`: applied atomically as one
/// version. Group members may name users, groups or objects of the same seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seed {
    #[serde(default)]
    pub users: Vec<NewUser>,
    #[serde(default)]
    pub groups: Vec<NewGroup>,
    #[serde(default)]
    pub objects: Vec<NewDirectoryObject>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedResult {
    pub version: u64,
    pub committed_at_ms: u64,
    pub user_ids: Vec<Uuid>,
    pub group_ids: Vec<Uuid>,
    pub object_ids: Vec<Uuid>,
    pub memberships: usize,
}

/// Which kinds of groups `POST /admin/generate` creates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GeneratedGroupKind {
    #[default]
    Security,
    Unified,
    /// Alternating security and Microsoft 365 groups.
    Mixed,
}

/// Body of `POST /admin/generate`: a large synthetic tenant. Group `g` gets the
/// `membersPerGroup` users starting at user `g × membersPerGroup` (wrapping), so
/// groups overlap when `groups × membersPerGroup > users`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateSpec {
    pub users: u32,
    pub groups: u32,
    pub members_per_group: u32,
    /// Domain SID prefix (`S-1-5-21-a-b-c`); synced users get `{prefix}-{rid}` as
    /// `onPremisesSecurityIdentifier`. No prefix → all users are cloud-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid_prefix: Option<String>,
    /// Share of users (0–100) that are synced from AD when a prefix is given.
    #[serde(default = "hundred")]
    pub synced_percent: u8,
    #[serde(default)]
    pub group_kind: GeneratedGroupKind,
    /// Prefix of display names and nicknames, so several generated sets can coexist.
    #[serde(default = "default_name_prefix")]
    pub name_prefix: String,
    /// RNG seed for ids: the same spec on an empty tenant yields the same ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Return every user id (large for big tenants).
    #[serde(default)]
    pub return_user_ids: bool,
    /// Member counts of additional large security groups (e.g. `[250000]`). Their
    /// members are the generated users; when a count exceeds `users`, more users are
    /// generated (as member-only users) so the group can be that large.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub large_groups: Vec<u32>,
}

fn hundred() -> u8 {
    100
}

fn default_name_prefix() -> String {
    "gen".into()
}

impl Default for GenerateSpec {
    fn default() -> Self {
        GenerateSpec {
            users: 0,
            groups: 0,
            members_per_group: 0,
            sid_prefix: None,
            synced_percent: 100,
            group_kind: GeneratedGroupKind::Security,
            name_prefix: default_name_prefix(),
            seed: None,
            return_user_ids: false,
            large_groups: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateResult {
    pub version: u64,
    pub committed_at_ms: u64,
    pub users: usize,
    pub groups: usize,
    pub memberships: usize,
    pub group_ids: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_ids: Option<Vec<Uuid>>,
    pub elapsed_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectCounts {
    pub active: usize,
    pub soft_deleted: usize,
    pub hard_deleted: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestCount {
    /// Route pattern, e.g. `/v1.0/groups/delta`, or `unmatched`.
    pub endpoint: String,
    pub status: u16,
    pub count: u64,
}

/// Delta requests of one resource and kind (`initial`, `nextLink`, `deltaLink`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeltaRequestCount {
    pub resource: String,
    pub kind: String,
    pub count: u64,
}

/// `GET /admin/stats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub version: u64,
    pub committed_at_ms: u64,
    pub users: ObjectCounts,
    pub groups: ObjectCounts,
    pub other_objects: usize,
    /// Member links stored, including those of soft-deleted groups.
    pub memberships: usize,
    /// Delta rounds whose pages are still held server-side.
    pub open_rounds: usize,
    pub access_tokens_issued: u64,
    pub faults_injected: u64,
    pub requests: Vec<RequestCount>,
    /// Authorized delta requests by resource and kind.
    #[serde(default)]
    pub delta_requests: Vec<DeltaRequestCount>,
}
