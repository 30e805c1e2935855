//! Domain change events (`gwb_core::event`) ↔ bus messages (`events::v1`), both
//! directions. The collector encodes what it read from Graph; the planner decodes
//! before planning, so nothing past this module sees a wire type of an event.

use gwb_core::event::{
    Change, ChangeEvent, GroupObserved, MemberLink, ObjectRemoved, RemovalReason, Resource, RoundBoundary,
    UserObserved, WritebackConfiguration,
};
use gwb_core::members::MemberKind;

use crate::events::v1 as pb;
use pb::change_event::Change as WireChange;

/// Why a change event from the bus cannot be planned (it is dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the event has no event_id")]
    NoEventId,
    #[error("the event carries no change")]
    NoChange,
    #[error("the round boundary names no known resource ({0})")]
    UnknownResource(i32),
}

impl From<Resource> for pb::Resource {
    fn from(resource: Resource) -> Self {
        match resource {
            Resource::Users => pb::Resource::Users,
            Resource::Groups => pb::Resource::Groups,
        }
    }
}

impl From<MemberKind> for pb::MemberKind {
    fn from(kind: MemberKind) -> Self {
        match kind {
            MemberKind::User => pb::MemberKind::User,
            MemberKind::Group => pb::MemberKind::Group,
            MemberKind::Device => pb::MemberKind::Device,
            MemberKind::OrgContact => pb::MemberKind::OrgContact,
            MemberKind::ServicePrincipal => pb::MemberKind::ServicePrincipal,
            MemberKind::Application => pb::MemberKind::Application,
            MemberKind::Other => pb::MemberKind::Other,
        }
    }
}

/// A kind this build does not know (a newer collector) is `Other`: skipped with a
/// reason, never guessed.
fn member_kind(kind: i32) -> MemberKind {
    match pb::MemberKind::try_from(kind).unwrap_or(pb::MemberKind::Other) {
        pb::MemberKind::User => MemberKind::User,
        pb::MemberKind::Group => MemberKind::Group,
        pb::MemberKind::Device => MemberKind::Device,
        pb::MemberKind::OrgContact => MemberKind::OrgContact,
        pb::MemberKind::ServicePrincipal => MemberKind::ServicePrincipal,
        pb::MemberKind::Application => MemberKind::Application,
        pb::MemberKind::Other | pb::MemberKind::Unspecified => MemberKind::Other,
    }
}

impl From<MemberLink> for pb::MemberLink {
    fn from(link: MemberLink) -> Self {
        pb::MemberLink { id: link.id, kind: pb::MemberKind::from(link.kind) as i32 }
    }
}

impl From<pb::MemberLink> for MemberLink {
    fn from(link: pb::MemberLink) -> Self {
        MemberLink { id: link.id, kind: member_kind(link.kind) }
    }
}

impl From<UserObserved> for pb::UserUpsert {
    fn from(user: UserObserved) -> Self {
        pb::UserUpsert {
            id: user.id,
            display_name: user.display_name,
            user_principal_name: user.user_principal_name,
            on_premises_security_identifier: user.on_premises_security_identifier,
            on_premises_sync_enabled: user.on_premises_sync_enabled,
            on_premises_distinguished_name: user.on_premises_distinguished_name,
            on_premises_sam_account_name: user.on_premises_sam_account_name,
            user_type: user.user_type,
        }
    }
}

impl From<pb::UserUpsert> for UserObserved {
    fn from(user: pb::UserUpsert) -> Self {
        UserObserved {
            id: user.id,
            display_name: user.display_name,
            user_principal_name: user.user_principal_name,
            user_type: user.user_type,
            on_premises_security_identifier: user.on_premises_security_identifier,
            on_premises_sync_enabled: user.on_premises_sync_enabled,
            on_premises_distinguished_name: user.on_premises_distinguished_name,
            on_premises_sam_account_name: user.on_premises_sam_account_name,
        }
    }
}

impl From<GroupObserved> for pb::GroupUpsert {
    fn from(group: GroupObserved) -> Self {
        pb::GroupUpsert {
            id: group.id,
            display_name: group.display_name,
            description: group.description,
            mail_nickname: group.mail_nickname,
            mail: group.mail,
            mail_enabled: group.mail_enabled,
            security_enabled: group.security_enabled,
            group_types: group.group_types,
            proxy_addresses: group.proxy_addresses,
            on_premises_sync_enabled: group.on_premises_sync_enabled,
            on_premises_security_identifier: group.on_premises_security_identifier,
            writeback_configuration: group.writeback.map(|w| pb::WritebackConfiguration {
                is_enabled: w.is_enabled,
                on_premises_group_type: w.on_premises_group_type,
            }),
            members_added: group.members_added.into_iter().map(Into::into).collect(),
            members_removed: group.members_removed.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::GroupUpsert> for GroupObserved {
    fn from(group: pb::GroupUpsert) -> Self {
        GroupObserved {
            id: group.id,
            display_name: group.display_name,
            description: group.description,
            mail_nickname: group.mail_nickname,
            mail: group.mail,
            mail_enabled: group.mail_enabled,
            security_enabled: group.security_enabled,
            group_types: group.group_types,
            proxy_addresses: group.proxy_addresses,
            on_premises_sync_enabled: group.on_premises_sync_enabled,
            on_premises_security_identifier: group.on_premises_security_identifier,
            writeback: group.writeback_configuration.map(|w| WritebackConfiguration {
                is_enabled: w.is_enabled,
                on_premises_group_type: w.on_premises_group_type,
            }),
            members_added: group.members_added.into_iter().map(Into::into).collect(),
            members_removed: group.members_removed.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<ObjectRemoved> for pb::ObjectRemoved {
    fn from(removed: ObjectRemoved) -> Self {
        let reason = match removed.reason {
            RemovalReason::Changed => pb::RemovalReason::Changed,
            RemovalReason::Deleted => pb::RemovalReason::Deleted,
        };
        pb::ObjectRemoved { id: removed.id, reason: reason as i32 }
    }
}

impl From<pb::ObjectRemoved> for ObjectRemoved {
    /// Only an explicit "deleted" is a permanent delete; an unset or unknown reason is
    /// the conservative soft removal, as the collector treats a reason Graph did not name.
    fn from(removed: pb::ObjectRemoved) -> Self {
        let reason = if removed.reason == pb::RemovalReason::Deleted as i32 {
            RemovalReason::Deleted
        } else {
            RemovalReason::Changed
        };
        ObjectRemoved { id: removed.id, reason }
    }
}

impl From<RoundBoundary> for pb::RoundBoundary {
    fn from(boundary: RoundBoundary) -> Self {
        pb::RoundBoundary { resource: pb::Resource::from(boundary.resource) as i32, full: boundary.full }
    }
}

impl TryFrom<pb::RoundBoundary> for RoundBoundary {
    type Error = EventError;

    fn try_from(boundary: pb::RoundBoundary) -> Result<Self, EventError> {
        let resource = match pb::Resource::try_from(boundary.resource) {
            Ok(pb::Resource::Users) => Resource::Users,
            Ok(pb::Resource::Groups) => Resource::Groups,
            _ => return Err(EventError::UnknownResource(boundary.resource)),
        };
        Ok(RoundBoundary { resource, full: boundary.full })
    }
}

impl From<Change> for WireChange {
    fn from(change: Change) -> Self {
        match change {
            Change::User(user) => WireChange::User(user.into()),
            Change::UserRemoved(removed) => WireChange::UserRemoved(removed.into()),
            Change::Group(group) => WireChange::Group(group.into()),
            Change::GroupRemoved(removed) => WireChange::GroupRemoved(removed.into()),
            Change::RoundStarted(boundary) => WireChange::RoundStarted(boundary.into()),
            Change::RoundCompleted(boundary) => WireChange::RoundCompleted(boundary.into()),
        }
    }
}

impl TryFrom<WireChange> for Change {
    type Error = EventError;

    fn try_from(change: WireChange) -> Result<Self, EventError> {
        Ok(match change {
            WireChange::User(user) => Change::User(user.into()),
            WireChange::UserRemoved(removed) => Change::UserRemoved(removed.into()),
            WireChange::Group(group) => Change::Group(group.into()),
            WireChange::GroupRemoved(removed) => Change::GroupRemoved(removed.into()),
            WireChange::RoundStarted(boundary) => Change::RoundStarted(boundary.try_into()?),
            WireChange::RoundCompleted(boundary) => Change::RoundCompleted(boundary.try_into()?),
        })
    }
}

impl From<ChangeEvent> for pb::ChangeEvent {
    fn from(event: ChangeEvent) -> Self {
        pb::ChangeEvent {
            event_id: event.event_id,
            cause: event.cause,
            observed_at_ms: event.observed_at_ms,
            round_id: event.round_id,
            round_position: event.round_position,
            change: Some(event.change.into()),
        }
    }
}

impl TryFrom<pb::ChangeEvent> for ChangeEvent {
    type Error = EventError;

    fn try_from(event: pb::ChangeEvent) -> Result<Self, EventError> {
        if event.event_id.is_empty() {
            return Err(EventError::NoEventId);
        }
        let change = event.change.ok_or(EventError::NoChange)?.try_into()?;
        Ok(ChangeEvent {
            event_id: event.event_id,
            cause: event.cause,
            observed_at_ms: event.observed_at_ms,
            round_id: event.round_id,
            round_position: event.round_position,
            change,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(change: Change) -> ChangeEvent {
        ChangeEvent {
            event_id: "e1".into(),
            cause: "graph groups/delta".into(),
            observed_at_ms: 1_700_000_000_000,
            round_id: "r1".into(),
            round_position: 3,
            change,
        }
    }

    #[test]
    fn every_change_survives_the_round_trip() {
        let group = GroupObserved {
            id: "g1".into(),
            display_name: Some("Sales".into()),
            mail_nickname: Some("sales".into()),
            group_types: vec!["Unified".into()],
            proxy_addresses: vec!["SMTP:sales@contoso.com".into()],
            writeback: Some(WritebackConfiguration {
                is_enabled: Some(true),
                on_premises_group_type: Some("universalDistributionGroup".into()),
            }),
            members_added: vec![MemberLink { id: "u1".into(), kind: MemberKind::User }],
            members_removed: vec![MemberLink { id: "d1".into(), kind: MemberKind::Device }],
            ..GroupObserved::default()
        };
        let user = UserObserved {
            id: "u1".into(),
            on_premises_security_identifier: Some("S-1-5-21-1-2-3-1105".into()),
            on_premises_sync_enabled: Some(true),
            ..UserObserved::default()
        };
        for change in [
            Change::Group(group),
            Change::User(user),
            Change::GroupRemoved(ObjectRemoved { id: "g2".into(), reason: RemovalReason::Changed }),
            Change::UserRemoved(ObjectRemoved { id: "u2".into(), reason: RemovalReason::Deleted }),
            Change::RoundStarted(RoundBoundary { resource: Resource::Groups, full: true }),
            Change::RoundCompleted(RoundBoundary { resource: Resource::Users, full: false }),
        ] {
            let domain = event(change);
            let wire = pb::ChangeEvent::from(domain.clone());
            assert_eq!(ChangeEvent::try_from(wire), Ok(domain));
        }
    }

    #[test]
    fn incomplete_events_are_refused_and_unknown_kinds_are_other() {
        let mut wire =
            pb::ChangeEvent::from(event(Change::RoundStarted(RoundBoundary { resource: Resource::Users, full: true })));
        wire.event_id.clear();
        assert_eq!(ChangeEvent::try_from(wire.clone()), Err(EventError::NoEventId));
        wire.event_id = "e2".into();
        wire.change = None;
        assert_eq!(ChangeEvent::try_from(wire.clone()), Err(EventError::NoChange));
        wire.change = Some(WireChange::RoundCompleted(pb::RoundBoundary { resource: 99, full: false }));
        assert_eq!(ChangeEvent::try_from(wire), Err(EventError::UnknownResource(99)));
        assert_eq!(MemberLink::from(pb::MemberLink { id: "x".into(), kind: 42 }).kind, MemberKind::Other);
        let unnamed = ObjectRemoved::from(pb::ObjectRemoved { id: "g".into(), reason: 0 });
        assert_eq!(unnamed.reason, RemovalReason::Changed);
    }
}
