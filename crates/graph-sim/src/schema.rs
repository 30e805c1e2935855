//! The user and group properties the simulator knows, how each is typed, and which
//! are returned without `$select` (graph-api.md §3, §4).

use serde_json::{Map, Value};

/// Which delta collection a request or token belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Resource {
    #[serde(rename = "u")]
    Users,
    #[serde(rename = "g")]
    Groups,
}

impl Resource {
    pub fn segment(self) -> &'static str {
        match self {
            Resource::Users => "users",
            Resource::Groups => "groups",
        }
    }

    pub fn odata_type_name(self) -> &'static str {
        match self {
            Resource::Users => "microsoft.graph.user",
            Resource::Groups => "microsoft.graph.group",
        }
    }

    pub fn props(self) -> &'static [PropDef] {
        match self {
            Resource::Users => USER_PROPS,
            Resource::Groups => GROUP_PROPS,
        }
    }
}

/// `/v1.0` or `/beta`: beta adds group `writebackConfiguration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    Beta,
}

impl ApiVersion {
    pub fn segment(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1.0",
            ApiVersion::Beta => "beta",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropType {
    Str,
    Bool,
    StrList,
    DateTime,
    Writeback,
}

#[derive(Debug)]
pub struct PropDef {
    pub name: &'static str,
    pub ty: PropType,
    /// Returned when the request has no `$select`.
    pub default: bool,
    pub beta_only: bool,
}

const fn prop(name: &'static str, ty: PropType, default: bool) -> PropDef {
    PropDef { name, ty, default, beta_only: false }
}

// Per the v1.0 user docs, accountEnabled, userType and every onPremises* property are
// "returned only on $select".
pub const USER_PROPS: &[PropDef] = &[
    prop("displayName", PropType::Str, true),
    prop("userPrincipalName", PropType::Str, true),
    prop("mail", PropType::Str, true),
    prop("accountEnabled", PropType::Bool, false),
    prop("userType", PropType::Str, false),
    prop("onPremisesSecurityIdentifier", PropType::Str, false),
    prop("onPremisesSyncEnabled", PropType::Bool, false),
    prop("onPremisesDistinguishedName", PropType::Str, false),
    prop("onPremisesSamAccountName", PropType::Str, false),
    prop("onPremisesDomainName", PropType::Str, false),
    prop("onPremisesImmutableId", PropType::Str, false),
];

pub const GROUP_PROPS: &[PropDef] = &[
    prop("displayName", PropType::Str, true),
    prop("description", PropType::Str, true),
    prop("mailNickname", PropType::Str, true),
    prop("mail", PropType::Str, true),
    prop("mailEnabled", PropType::Bool, true),
    prop("securityEnabled", PropType::Bool, true),
    prop("groupTypes", PropType::StrList, true),
    prop("proxyAddresses", PropType::StrList, true),
    prop("onPremisesSyncEnabled", PropType::Bool, true),
    prop("onPremisesSecurityIdentifier", PropType::Str, true),
    prop("securityIdentifier", PropType::Str, true),
    prop("visibility", PropType::Str, true),
    prop("createdDateTime", PropType::DateTime, true),
    prop("membershipRule", PropType::Str, true),
    // Whether beta returns it by default is undocumented; it is treated as $select-only.
    PropDef { name: "writebackConfiguration", ty: PropType::Writeback, default: false, beta_only: true },
];

// Schema indices the store fills in itself (checked by `indices_match_names`).
pub const USER_DISPLAY_NAME: usize = 0;
pub const USER_PRINCIPAL_NAME: usize = 1;
pub const USER_ACCOUNT_ENABLED: usize = 3;
pub const USER_TYPE: usize = 4;
pub const USER_ONPREM_SID: usize = 5;
pub const USER_ONPREM_SYNC_ENABLED: usize = 6;
pub const USER_ONPREM_SAM: usize = 8;
pub const GROUP_DISPLAY_NAME: usize = 0;
pub const GROUP_MAIL_NICKNAME: usize = 2;
pub const GROUP_MAIL: usize = 3;
pub const GROUP_TYPES: usize = 6;
pub const GROUP_VISIBILITY: usize = 11;
pub const GROUP_CREATED: usize = 12;
pub const GROUP_SECURITY_IDENTIFIER: usize = 10;
pub const GROUP_MAIL_ENABLED: usize = 4;
pub const GROUP_SECURITY_ENABLED: usize = 5;
pub const GROUP_PROXY_ADDRESSES: usize = 7;

/// Index of a property by name; Graph matches `$select` names case-insensitively.
pub fn find(props: &[PropDef], name: &str) -> Option<usize> {
    props.iter().position(|p| p.name.eq_ignore_ascii_case(name))
}

/// Bit mask of every property visible on `api`.
pub fn all_mask(props: &[PropDef], api: ApiVersion) -> u32 {
    props.iter().enumerate().filter(|(_, p)| api == ApiVersion::Beta || !p.beta_only).fold(0, |m, (i, _)| m | 1 << i)
}

/// Indices of the properties returned without `$select` on `api`.
pub fn default_props(props: &[PropDef], api: ApiVersion) -> Vec<usize> {
    props
        .iter()
        .enumerate()
        .filter(|(_, p)| p.default && (api == ApiVersion::Beta || !p.beta_only))
        .map(|(i, _)| i)
        .collect()
}

const ONPREM_GROUP_TYPES: [&str; 3] =
    ["universalDistributionGroup", "universalSecurityGroup", "universalMailEnabledSecurityGroup"];
const WRITEBACK_ODATA_TYPE: &str = "#microsoft.graph.groupWritebackConfiguration";

/// Checks an admin-supplied value for `def` and returns it in the stored form.
/// `null` is always accepted: it clears the property.
pub fn validate(def: &PropDef, value: &Value) -> Result<Value, String> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    let bad = |what: &str| Err(format!("property '{}' must be {what}", def.name));
    let normalized = match def.ty {
        PropType::Str => match value {
            Value::String(_) => value.clone(),
            _ => return bad("a string"),
        },
        PropType::Bool => match value {
            Value::Bool(_) => value.clone(),
            _ => return bad("a boolean"),
        },
        PropType::DateTime => match value {
            Value::String(s) if crate::time::is_iso8601(s) => value.clone(),
            _ => return bad("an ISO-8601 date-time string such as 2024-05-01T12:34:56Z"),
        },
        PropType::StrList => match value {
            Value::Array(items) if items.iter().all(Value::is_string) => value.clone(),
            _ => return bad("an array of strings"),
        },
        PropType::Writeback => validate_writeback(value)?,
    };
    check_semantics(def.name, &normalized)?;
    Ok(normalized)
}

fn validate_writeback(value: &Value) -> Result<Value, String> {
    let Value::Object(map) = value else {
        return Err("property 'writebackConfiguration' must be an object".into());
    };
    let mut is_enabled = Value::Null;
    let mut group_type = Value::Null;
    for (k, v) in map {
        match k.as_str() {
            "@odata.type" if v.as_str() == Some(WRITEBACK_ODATA_TYPE) => {}
            "isEnabled" if v.is_boolean() || v.is_null() => is_enabled = v.clone(),
            "onPremisesGroupType" => match v {
                Value::Null => {}
                Value::String(s) if ONPREM_GROUP_TYPES.contains(&s.as_str()) => group_type = v.clone(),
                _ => {
                    return Err(format!(
                        "writebackConfiguration.onPremisesGroupType must be null or one of {}",
                        ONPREM_GROUP_TYPES.join(", ")
                    ));
                }
            },
            _ => {
                return Err(format!(
                    "writebackConfiguration: unexpected member '{k}' (allowed: isEnabled (boolean|null), onPremisesGroupType)"
                ));
            }
        }
    }
    let mut out = Map::new();
    out.insert("@odata.type".into(), WRITEBACK_ODATA_TYPE.into());
    out.insert("isEnabled".into(), is_enabled);
    out.insert("onPremisesGroupType".into(), group_type);
    Ok(Value::Object(out))
}

fn check_semantics(name: &str, value: &Value) -> Result<(), String> {
    let Some(s) = value.as_str() else {
        return Ok(());
    };
    match name {
        "mailNickname"
            // Characters Graph refuses in mailNickname (group docs).
            if (s.is_empty() || s.chars().any(|c| "@()\\[]\";:.<>, ".contains(c) || c.is_control())) => {
                return Err(format!(
                    "mailNickname '{s}' is empty or contains one of @()\\[]\";:.<>, or a space"
                ));
            }
        "visibility"
            if !["Public", "Private", "HiddenMembership"].iter().any(|v| v.eq_ignore_ascii_case(s)) => {
                return Err(format!("visibility '{s}' must be Public, Private or HiddenMembership"));
            }
        "userType"
            if s != "Member" && s != "Guest" => {
                return Err(format!("userType '{s}' must be Member or Guest"));
            }
        "userPrincipalName"
            if (s.split('@').count() != 2 || s.starts_with('@') || s.ends_with('@')) => {
                return Err(format!("userPrincipalName '{s}' must look like alias@domain"));
            }
        "onPremisesSecurityIdentifier" | "securityIdentifier" => {
            let ok = s.len() > 4
                && s[..4].eq_ignore_ascii_case("S-1-")
                && s[4..].split('-').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                return Err(format!("{name} '{s}' is not a SID (S-1-…)"));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The cloud SID Entra derives from a group's object id: `S-1-12-1-` followed by the
/// GUID's 16 bytes read as four little-endian u32s.
pub fn cloud_sid(id: &uuid::Uuid) -> String {
    let b = id.to_bytes_le();
    let part = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    format!("S-1-12-1-{}-{}-{}-{}", part(0), part(4), part(8), part(12))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn indices_match_names() {
        assert_eq!(USER_PROPS[USER_DISPLAY_NAME].name, "displayName");
        assert_eq!(USER_PROPS[USER_PRINCIPAL_NAME].name, "userPrincipalName");
        assert_eq!(USER_PROPS[USER_ACCOUNT_ENABLED].name, "accountEnabled");
        assert_eq!(USER_PROPS[USER_TYPE].name, "userType");
        assert_eq!(USER_PROPS[USER_ONPREM_SID].name, "onPremisesSecurityIdentifier");
        assert_eq!(USER_PROPS[USER_ONPREM_SYNC_ENABLED].name, "onPremisesSyncEnabled");
        assert_eq!(USER_PROPS[USER_ONPREM_SAM].name, "onPremisesSamAccountName");
        assert_eq!(GROUP_PROPS[GROUP_DISPLAY_NAME].name, "displayName");
        assert_eq!(GROUP_PROPS[GROUP_MAIL_NICKNAME].name, "mailNickname");
        assert_eq!(GROUP_PROPS[GROUP_MAIL].name, "mail");
        assert_eq!(GROUP_PROPS[GROUP_TYPES].name, "groupTypes");
        assert_eq!(GROUP_PROPS[GROUP_VISIBILITY].name, "visibility");
        assert_eq!(GROUP_PROPS[GROUP_CREATED].name, "createdDateTime");
        assert_eq!(GROUP_PROPS[GROUP_SECURITY_IDENTIFIER].name, "securityIdentifier");
        assert_eq!(GROUP_PROPS[GROUP_MAIL_ENABLED].name, "mailEnabled");
        assert_eq!(GROUP_PROPS[GROUP_SECURITY_ENABLED].name, "securityEnabled");
        assert_eq!(GROUP_PROPS[GROUP_PROXY_ADDRESSES].name, "proxyAddresses");
        assert!(GROUP_PROPS.len() < 30 && USER_PROPS.len() < 30, "masks use bits 30 and 31");
    }

    #[test]
    fn writeback_is_normalized() {
        let def = &GROUP_PROPS[GROUP_PROPS.len() - 1];
        let v = validate(def, &json!({"isEnabled": true})).unwrap();
        assert_eq!(v, json!({"@odata.type": WRITEBACK_ODATA_TYPE, "isEnabled": true, "onPremisesGroupType": null}));
        assert!(validate(def, &json!({"onPremisesGroupType": "global"})).is_err());
        assert!(validate(def, &json!({"isEnabled": "yes"})).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        let nick = &GROUP_PROPS[find(GROUP_PROPS, "mailNickname").unwrap()];
        assert!(validate(nick, &json!("a b")).is_err());
        assert!(validate(nick, &json!("ok-nick")).is_ok());
        let sid = &USER_PROPS[find(USER_PROPS, "onpremisessecurityidentifier").unwrap()];
        assert!(validate(sid, &json!("S-1-5-21-1-2-3-1001")).is_ok());
        assert!(validate(sid, &json!("S-1-5-x")).is_err());
        assert!(validate(&GROUP_PROPS[GROUP_TYPES], &json!(["Unified", 3])).is_err());
    }

    #[test]
    fn cloud_sid_shape() {
        let id = uuid::Uuid::parse_str("00000001-0000-0000-0000-000000000000").unwrap();
        assert_eq!(cloud_sid(&id), "S-1-12-1-1-0-0-0");
    }
}
