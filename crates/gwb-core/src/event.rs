//! Domain change events: what the collector observed in the tenant, in the planner's
//! terms. `gwb-graph` parses Graph's delta pages into these types, and `gwb-proto`'s
//! `convert::events` is the only place that maps them to and from the bus messages.

use crate::members::MemberKind;

/// A directory resource the collector follows with a delta query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Users,
    Groups,
}

impl Resource {
    /// Every resource, in the order a round reads them: users first, so fresh user
    /// anchors arrive before the groups that use them.
    pub const ALL: [Resource; 2] = [Resource::Users, Resource::Groups];

    /// Graph's path segment (`users`, `groups`), also the name in logs and metrics.
    pub fn path(self) -> &'static str {
        match self {
            Resource::Users => "users",
            Resource::Groups => "groups",
        }
    }
}

/// A user as a delta round returned it (every selected property at its current value).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserObserved {
    pub id: String,
    pub display_name: Option<String>,
    pub user_principal_name: Option<String>,
    pub user_type: Option<String>,
    /// AD SID of a user synced from AD; absent for cloud-only users.
    pub on_premises_security_identifier: Option<String>,
    pub on_premises_sync_enabled: Option<bool>,
    pub on_premises_distinguished_name: Option<String>,
    pub on_premises_sam_account_name: Option<String>,
}

/// One `members@delta` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberLink {
    pub id: String,
    pub kind: MemberKind,
}

/// Graph's beta `writebackConfiguration` of a group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WritebackConfiguration {
    pub is_enabled: Option<bool>,
    /// `universalSecurityGroup`, `universalDistributionGroup` or
    /// `universalMailEnabledSecurityGroup`.
    pub on_premises_group_type: Option<String>,
}

/// A group as a delta page returned it, with the member links of this slice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupObserved {
    pub id: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub mail_nickname: Option<String>,
    pub mail: Option<String>,
    pub mail_enabled: Option<bool>,
    pub security_enabled: Option<bool>,
    pub group_types: Vec<String>,
    pub proxy_addresses: Vec<String>,
    /// True for groups synced from AD: never written back (it would loop).
    pub on_premises_sync_enabled: Option<bool>,
    /// The SID of the AD group this group was synced from. Set while it is synced, and
    /// still set after its source of authority moved to the cloud or sync was switched
    /// off: then an AD group with this SID may exist.
    pub on_premises_security_identifier: Option<String>,
    /// Present when the collector reads the beta endpoint and Graph sent it.
    pub writeback: Option<WritebackConfiguration>,
    /// Links added in this slice (in a full round: the current membership).
    pub members_added: Vec<MemberLink>,
    /// Links removed in this slice (`@removed` in `members@delta`).
    pub members_removed: Vec<MemberLink>,
}

/// Why an object left the delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// Soft-deleted, restorable (`"changed"`).
    Changed,
    /// Permanently deleted (`"deleted"`). A missing or unknown reason is `Changed`.
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRemoved {
    pub id: String,
    pub reason: RemovalReason,
}

/// Start or end of one delta round. A *full* round lists every object; what the planner
/// knows but a full round did not show has vanished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundBoundary {
    pub resource: Resource,
    pub full: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    User(UserObserved),
    UserRemoved(ObjectRemoved),
    Group(GroupObserved),
    GroupRemoved(ObjectRemoved),
    RoundStarted(RoundBoundary),
    RoundCompleted(RoundBoundary),
}

/// One observation with its identity and origin. Redelivery and replays are normal:
/// consumers are idempotent on `event_id` and on the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    pub event_id: String,
    /// Human-readable origin, e.g. "graph groups/delta round 7f3c… page 3".
    pub cause: String,
    pub observed_at_ms: i64,
    pub round_id: String,
    pub round_position: u64,
    pub change: Change,
}
