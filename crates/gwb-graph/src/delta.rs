//! Typed delta pages. Parsing is strict about structure (a page must carry exactly one
//! of nextLink/deltaLink and a `value` array) and lenient about content (unknown
//! properties are ignored, missing ones are `None`), as Graph's contract requires.

use serde_json::{Map, Value};

use gwb_core::event::{
    Change, GroupObserved, MemberLink, ObjectRemoved, RemovalReason, Resource, UserObserved, WritebackConfiguration,
};
use gwb_core::members::MemberKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageLink {
    /// More pages follow (even when this one is empty).
    Next(String),
    /// Last page of the round: the link to start the next round from.
    Delta(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeltaPage {
    pub items: Vec<DeltaItem>,
    pub link: PageLink,
    /// Ids of `members@delta` entries without `@odata.type` (their links carry
    /// `MemberKind::Other` until the caller resolves them, F21).
    pub untyped_members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeltaItem {
    User(UserObserved),
    Group(GroupObserved),
    Removed { id: String, reason: RemovalReason },
}

impl DeltaItem {
    /// The domain change this item reports; `resource` says what a removal removed.
    pub fn into_change(self, resource: Resource) -> Change {
        match self {
            DeltaItem::User(user) => Change::User(user),
            DeltaItem::Group(group) => Change::Group(group),
            DeltaItem::Removed { id, reason } => {
                let removed = ObjectRemoved { id, reason };
                match resource {
                    Resource::Users => Change::UserRemoved(removed),
                    Resource::Groups => Change::GroupRemoved(removed),
                }
            }
        }
    }
}

/// Graph's `@odata.type` of a member, as the domain's member kind.
pub(crate) fn member_kind(odata_type: Option<&str>) -> MemberKind {
    match odata_type.map(|t| t.trim_start_matches("#microsoft.graph.")) {
        Some("user") => MemberKind::User,
        Some("group") => MemberKind::Group,
        Some("device") => MemberKind::Device,
        Some("orgContact") => MemberKind::OrgContact,
        Some("servicePrincipal") => MemberKind::ServicePrincipal,
        Some("application") => MemberKind::Application,
        _ => MemberKind::Other,
    }
}

/// Parses one delta page body.
pub(crate) fn parse_page(resource: Resource, body: &[u8]) -> Result<DeltaPage, String> {
    let root: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let object = root.as_object().ok_or("page is not a JSON object")?;
    let next = object.get("@odata.nextLink").and_then(Value::as_str);
    let delta = object.get("@odata.deltaLink").and_then(Value::as_str);
    let link = match (next, delta) {
        (Some(next), None) => PageLink::Next(next.to_string()),
        (None, Some(delta)) => PageLink::Delta(delta.to_string()),
        (Some(_), Some(_)) => return Err("page carries both @odata.nextLink and @odata.deltaLink".into()),
        (None, None) => return Err("page carries neither @odata.nextLink nor @odata.deltaLink".into()),
    };
    let values = object.get("value").and_then(Value::as_array).ok_or("page has no `value` array")?;
    let items = values
        .iter()
        .enumerate()
        .map(|(index, value)| parse_item(resource, value).map_err(|e| format!("value[{index}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut untyped_members: Vec<String> = values
        .iter()
        .filter_map(|value| value.get("members@delta").and_then(Value::as_array))
        .flatten()
        .filter(|member| member.get("@odata.type").is_none())
        .filter_map(|member| member.get("id").and_then(Value::as_str).map(str::to_string))
        .collect();
    untyped_members.sort();
    untyped_members.dedup();
    Ok(DeltaPage { items, link, untyped_members })
}

fn parse_item(resource: Resource, value: &Value) -> Result<DeltaItem, String> {
    let object = value.as_object().ok_or("entry is not an object")?;
    let id = string(object, "id").ok_or("entry has no string `id`")?;
    if let Some(removed) = object.get("@removed") {
        let reason = removed_reason(&id, removed);
        return Ok(DeltaItem::Removed { id, reason });
    }
    Ok(match resource {
        Resource::Users => DeltaItem::User(UserObserved {
            id,
            display_name: string(object, "displayName"),
            user_principal_name: string(object, "userPrincipalName"),
            user_type: string(object, "userType"),
            on_premises_security_identifier: string(object, "onPremisesSecurityIdentifier"),
            on_premises_sync_enabled: object.get("onPremisesSyncEnabled").and_then(Value::as_bool),
            on_premises_distinguished_name: string(object, "onPremisesDistinguishedName"),
            on_premises_sam_account_name: string(object, "onPremisesSamAccountName"),
        }),
        Resource::Groups => {
            let mut group = GroupObserved {
                id,
                display_name: string(object, "displayName"),
                description: string(object, "description"),
                mail_nickname: string(object, "mailNickname"),
                mail: string(object, "mail"),
                mail_enabled: object.get("mailEnabled").and_then(Value::as_bool),
                security_enabled: object.get("securityEnabled").and_then(Value::as_bool),
                group_types: strings(object, "groupTypes"),
                proxy_addresses: strings(object, "proxyAddresses"),
                on_premises_sync_enabled: object.get("onPremisesSyncEnabled").and_then(Value::as_bool),
                on_premises_security_identifier: string(object, "onPremisesSecurityIdentifier"),
                ..GroupObserved::default()
            };
            if let Some(config) = object.get("writebackConfiguration").and_then(Value::as_object) {
                group.writeback = Some(WritebackConfiguration {
                    is_enabled: config.get("isEnabled").and_then(Value::as_bool),
                    on_premises_group_type: string(config, "onPremisesGroupType"),
                });
            }
            if let Some(members) = object.get("members@delta") {
                let members = members.as_array().ok_or("`members@delta` is not an array")?;
                for member in members {
                    let member = member.as_object().ok_or("`members@delta` entry is not an object")?;
                    let change = MemberLink {
                        id: string(member, "id").ok_or("`members@delta` entry has no `id`")?,
                        kind: member_kind(member.get("@odata.type").and_then(Value::as_str)),
                    };
                    if member.contains_key("@removed") {
                        group.members_removed.push(change);
                    } else {
                        group.members_added.push(change);
                    }
                }
            }
            DeltaItem::Group(group)
        }
    })
}

/// Only `deleted` is a permanent delete. Graph documents the reason as optional
/// ("may include additional information about why the instance was removed"), so a
/// missing or unknown reason is the conservative one: a soft removal, which the
/// planner handles by `on_soft_delete` (default `keep`), never an AD deletion.
fn removed_reason(id: &str, removed: &Value) -> RemovalReason {
    match removed.get("reason").and_then(Value::as_str) {
        Some(reason) if reason.eq_ignore_ascii_case("deleted") => RemovalReason::Deleted,
        Some(reason) if reason.eq_ignore_ascii_case("changed") => RemovalReason::Changed,
        other => {
            tracing::warn!(id, reason = ?other, "@removed without a known reason: treated as a soft removal");
            RemovalReason::Changed
        }
    }
}

fn string(object: &Map<String, Value>, key: &str) -> Option<String> {
    object.get(key).and_then(Value::as_str).map(str::to_string)
}

fn strings(object: &Map<String, Value>, key: &str) -> Vec<String> {
    object
        .get(key)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_page_with_member_slice_and_removals() {
        let body = br##"{"@odata.context":"x","@odata.nextLink":"https://g/v1.0/groups/delta?$skiptoken=a",
          "value":[{"id":"g1","displayName":"Sales","groupTypes":[],"securityEnabled":true,
            "onPremisesSyncEnabled":null,"onPremisesSecurityIdentifier":"S-1-5-21-1-2-3-1109",
            "members@delta":[{"@odata.type":"#microsoft.graph.user","id":"u1"},
                             {"@odata.type":"#microsoft.graph.group","id":"g2","@removed":{"reason":"deleted"}}]},
            {"id":"g3","@removed":{"reason":"changed"}}]}"##;
        let page = parse_page(Resource::Groups, body).unwrap();
        assert_eq!(page.link, PageLink::Next("https://g/v1.0/groups/delta?$skiptoken=a".into()));
        let DeltaItem::Group(group) = &page.items[0] else { panic!("group expected") };
        assert_eq!(group.display_name.as_deref(), Some("Sales"));
        assert_eq!(group.on_premises_security_identifier.as_deref(), Some("S-1-5-21-1-2-3-1109"));
        assert_eq!(group.on_premises_sync_enabled, None);
        assert_eq!(group.members_added, vec![MemberLink { id: "u1".into(), kind: MemberKind::User }]);
        assert_eq!(group.members_removed, vec![MemberLink { id: "g2".into(), kind: MemberKind::Group }]);
        assert_eq!(page.items[1], DeltaItem::Removed { id: "g3".into(), reason: RemovalReason::Changed });
    }

    #[test]
    fn member_links_without_a_type_are_listed_for_resolution() {
        let body = br##"{"@odata.deltaLink":"d","value":[{"id":"g1","members@delta":[{"id":"u1"},
            {"@odata.type":"#microsoft.graph.user","id":"u2"},{"id":"u3","@removed":{"reason":"deleted"}}]}]}"##;
        let page = parse_page(Resource::Groups, body).unwrap();
        assert_eq!(page.untyped_members, ["u1", "u3"]);
        let DeltaItem::Group(group) = &page.items[0] else { panic!("group expected") };
        assert_eq!(group.members_added[0].kind, MemberKind::Other, "until the collector resolves it");
    }

    #[test]
    fn a_removal_without_a_known_reason_is_soft() {
        let body = br#"{"@odata.deltaLink":"d","value":[{"id":"g1","@removed":{}},
            {"id":"g2","@removed":{"reason":"unknownFutureValue"}},{"id":"g3","@removed":{"reason":"Deleted"}}]}"#;
        let page = parse_page(Resource::Groups, body).unwrap();
        assert_eq!(
            page.items,
            vec![
                DeltaItem::Removed { id: "g1".into(), reason: RemovalReason::Changed },
                DeltaItem::Removed { id: "g2".into(), reason: RemovalReason::Changed },
                DeltaItem::Removed { id: "g3".into(), reason: RemovalReason::Deleted },
            ]
        );
    }

    #[test]
    fn structural_faults_are_errors() {
        assert!(parse_page(Resource::Users, br#"{"value":[]"#).is_err());
        assert!(parse_page(Resource::Users, br#"{"value":[]}"#).is_err());
        assert!(parse_page(Resource::Users, br#"{"value":[],"@odata.nextLink":"a","@odata.deltaLink":"b"}"#).is_err());
        assert!(parse_page(Resource::Users, br#"{"value":[{"displayName":"x"}],"@odata.deltaLink":"b"}"#).is_err());
        let empty = parse_page(Resource::Users, br#"{"value":[],"@odata.nextLink":"n"}"#).unwrap();
        assert!(empty.items.is_empty());
    }

    #[test]
    fn user_anchors() {
        let body = br#"{"@odata.deltaLink":"d","value":[{"id":"u1","onPremisesSecurityIdentifier":"S-1-5-21-1-2-3-1105","onPremisesSyncEnabled":true,"userPrincipalName":"a@b"}]}"#;
        let page = parse_page(Resource::Users, body).unwrap();
        let DeltaItem::User(user) = &page.items[0] else { panic!("user expected") };
        assert_eq!(user.on_premises_security_identifier.as_deref(), Some("S-1-5-21-1-2-3-1105"));
        assert_eq!(user.on_premises_sync_enabled, Some(true));
    }
}
