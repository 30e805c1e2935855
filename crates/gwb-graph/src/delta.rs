//! Typed delta pages. Parsing is strict about structure (a page must carry exactly one
//! of nextLink/deltaLink and a `value` array) and lenient about content (unknown
//! properties are ignored, missing ones are `None`), as Graph's contract requires.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Users,
    Groups,
}

impl Resource {
    pub fn path(self) -> &'static str {
        match self {
            Resource::Users => "users",
            Resource::Groups => "groups",
        }
    }
}

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovedReason {
    /// Soft-deleted, restorable.
    Changed,
    /// Permanently deleted.
    Deleted,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeltaItem {
    User(UserChange),
    Group(GroupChange),
    Removed { id: String, reason: RemovedReason },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserChange {
    pub id: String,
    pub display_name: Option<String>,
    pub user_principal_name: Option<String>,
    pub user_type: Option<String>,
    pub on_premises_security_identifier: Option<String>,
    pub on_premises_sync_enabled: Option<bool>,
    pub on_premises_distinguished_name: Option<String>,
    pub on_premises_sam_account_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberType {
    User,
    Group,
    Device,
    OrgContact,
    ServicePrincipal,
    Application,
    Other,
}

impl MemberType {
    fn from_odata(odata_type: Option<&str>) -> Self {
        match odata_type.map(|t| t.trim_start_matches("#microsoft.graph.")) {
            Some("user") => MemberType::User,
            Some("group") => MemberType::Group,
            Some("device") => MemberType::Device,
            Some("orgContact") => MemberType::OrgContact,
            Some("servicePrincipal") => MemberType::ServicePrincipal,
            Some("application") => MemberType::Application,
            _ => MemberType::Other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    pub id: String,
    pub member_type: MemberType,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupChange {
    pub id: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub mail_nickname: Option<String>,
    pub mail: Option<String>,
    pub mail_enabled: Option<bool>,
    pub security_enabled: Option<bool>,
    pub group_types: Vec<String>,
    pub proxy_addresses: Vec<String>,
    pub on_premises_sync_enabled: Option<bool>,
    /// `(isEnabled, onPremisesGroupType)` from beta `writebackConfiguration`.
    pub writeback_enabled: Option<bool>,
    pub writeback_group_type: Option<String>,
    pub has_writeback_configuration: bool,
    pub members_added: Vec<MemberChange>,
    pub members_removed: Vec<MemberChange>,
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
    Ok(DeltaPage { items, link })
}

fn parse_item(resource: Resource, value: &Value) -> Result<DeltaItem, String> {
    let object = value.as_object().ok_or("entry is not an object")?;
    let id = string(object, "id").ok_or("entry has no string `id`")?;
    if let Some(removed) = object.get("@removed") {
        return Ok(DeltaItem::Removed { id, reason: removed_reason(removed) });
    }
    Ok(match resource {
        Resource::Users => DeltaItem::User(UserChange {
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
            let mut group = GroupChange {
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
                ..GroupChange::default()
            };
            if let Some(config) = object.get("writebackConfiguration").and_then(Value::as_object) {
                group.has_writeback_configuration = true;
                group.writeback_enabled = config.get("isEnabled").and_then(Value::as_bool);
                group.writeback_group_type = string(config, "onPremisesGroupType");
            }
            if let Some(members) = object.get("members@delta") {
                let members = members.as_array().ok_or("`members@delta` is not an array")?;
                for member in members {
                    let member = member.as_object().ok_or("`members@delta` entry is not an object")?;
                    let change = MemberChange {
                        id: string(member, "id").ok_or("`members@delta` entry has no `id`")?,
                        member_type: MemberType::from_odata(member.get("@odata.type").and_then(Value::as_str)),
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

fn removed_reason(removed: &Value) -> RemovedReason {
    match removed.get("reason").and_then(Value::as_str) {
        Some(reason) if reason.eq_ignore_ascii_case("changed") => RemovedReason::Changed,
        // "deleted", or anything unknown: the object is gone from our view either way;
        // deletion safety is the planner's job (threshold, soft/hard policy).
        _ => RemovedReason::Deleted,
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
            "members@delta":[{"@odata.type":"#microsoft.graph.user","id":"u1"},
                             {"@odata.type":"#microsoft.graph.group","id":"g2","@removed":{"reason":"deleted"}}]},
            {"id":"g3","@removed":{"reason":"changed"}}]}"##;
        let page = parse_page(Resource::Groups, body).unwrap();
        assert_eq!(page.link, PageLink::Next("https://g/v1.0/groups/delta?$skiptoken=a".into()));
        let DeltaItem::Group(group) = &page.items[0] else { panic!("group expected") };
        assert_eq!(group.display_name.as_deref(), Some("Sales"));
        assert_eq!(group.members_added, vec![MemberChange { id: "u1".into(), member_type: MemberType::User }]);
        assert_eq!(group.members_removed, vec![MemberChange { id: "g2".into(), member_type: MemberType::Group }]);
        assert_eq!(page.items[1], DeltaItem::Removed { id: "g3".into(), reason: RemovedReason::Changed });
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
