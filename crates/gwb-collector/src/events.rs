//! Graph delta items → protobuf change events.

use gwb_graph::{DeltaItem, GroupChange, MemberChange, MemberType, RemovedReason, Resource, UserChange};
use gwb_proto::events::v1 as pb;
use pb::change_event::Change;

pub fn resource(resource: Resource) -> pb::Resource {
    match resource {
        Resource::Users => pb::Resource::Users,
        Resource::Groups => pb::Resource::Groups,
    }
}

pub fn change(resource: Resource, item: DeltaItem) -> Change {
    match item {
        DeltaItem::User(user) => Change::User(user_upsert(user)),
        DeltaItem::Group(group) => Change::Group(group_upsert(group)),
        DeltaItem::Removed { id, reason } => {
            let removed = pb::ObjectRemoved { id, reason: removal_reason(reason) as i32 };
            match resource {
                Resource::Users => Change::UserRemoved(removed),
                Resource::Groups => Change::GroupRemoved(removed),
            }
        }
    }
}

fn removal_reason(reason: RemovedReason) -> pb::RemovalReason {
    match reason {
        RemovedReason::Changed => pb::RemovalReason::Changed,
        RemovedReason::Deleted => pb::RemovalReason::Deleted,
    }
}

fn user_upsert(user: UserChange) -> pb::UserUpsert {
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

fn group_upsert(group: GroupChange) -> pb::GroupUpsert {
    let writeback_configuration = group.has_writeback_configuration.then_some(pb::WritebackConfiguration {
        is_enabled: group.writeback_enabled,
        on_premises_group_type: group.writeback_group_type,
    });
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
        writeback_configuration,
        members_added: group.members_added.into_iter().map(member_link).collect(),
        members_removed: group.members_removed.into_iter().map(member_link).collect(),
    }
}

fn member_link(member: MemberChange) -> pb::MemberLink {
    let kind = match member.member_type {
        MemberType::User => pb::MemberKind::User,
        MemberType::Group => pb::MemberKind::Group,
        MemberType::Device => pb::MemberKind::Device,
        MemberType::OrgContact => pb::MemberKind::OrgContact,
        MemberType::ServicePrincipal => pb::MemberKind::ServicePrincipal,
        MemberType::Application => pb::MemberKind::Application,
        MemberType::Other => pb::MemberKind::Other,
    };
    pb::MemberLink { id: member.id, kind: kind as i32 }
}
