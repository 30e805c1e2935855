//! The AD group as read from the directory, and the pure comparison of it with the
//! desired `GroupSpec`: which attributes a new group gets and which ones an existing
//! group needs changed.

use std::collections::{BTreeSet, HashMap, HashSet};

use gwb_core::command::{AppliedGroup, GroupSpec, GroupType, MailAttributes};
use ldap3::{Mod, SearchEntry};

use crate::Capabilities;
use crate::codec::{guid_from_bytes, sid_from_bytes};
use crate::error::DirectoryError;

pub(crate) const EXTERNAL_ID: &str = "msDS-ExternalDirectoryObjectId";
pub(crate) const RECIPIENT_DISPLAY_TYPE: &str = "msExchRecipientDisplayType";
pub(crate) const RECIPIENT_TYPE_DETAILS: &str = "msExchRecipientTypeDetails";
pub(crate) const TARGET_ADDRESS: &str = "targetAddress";

/// Attributes read for every group the writer looks at.
const BASE_ATTRIBUTES: [&str; 10] = [
    "cn",
    "objectGUID",
    "objectSid",
    "sAMAccountName",
    "adminCount",
    "isCriticalSystemObject",
    "adminDescription",
    "groupType",
    "displayName",
    "description",
];

/// Everything to request for a group, given what the schema has.
pub(crate) fn attributes_to_read(caps: &Capabilities) -> Vec<&'static str> {
    let mut attrs = BASE_ATTRIBUTES.to_vec();
    if caps.has_external_directory_object_id {
        attrs.push(EXTERNAL_ID);
    }
    if caps.has_exchange_schema {
        attrs.extend([
            "mail",
            "mailNickname",
            "proxyAddresses",
            RECIPIENT_DISPLAY_TYPE,
            RECIPIENT_TYPE_DETAILS,
            TARGET_ADDRESS,
        ]);
    }
    attrs
}

/// A group as found in AD.
#[derive(Debug, Clone)]
pub(crate) struct GroupEntry {
    pub dn: String,
    pub cn: String,
    pub guid: String,
    pub sid: Option<String>,
    pub sam: String,
    pub admin_count: bool,
    pub critical: bool,
    pub admin_description: Option<String>,
    /// Every requested attribute by lower-cased name, for the diff.
    values: HashMap<String, Vec<String>>,
}

impl GroupEntry {
    pub fn from_search(entry: SearchEntry) -> Result<GroupEntry, DirectoryError> {
        let guid = binary(&entry, "objectGUID")
            .and_then(|b| guid_from_bytes(&b))
            .ok_or_else(|| DirectoryError::permanent(format!("{} has no readable objectGUID", entry.dn)))?;
        let sid = binary(&entry, "objectSid").and_then(|b| sid_from_bytes(&b));
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        for (name, vals) in &entry.attrs {
            values.entry(name.to_ascii_lowercase()).or_default().extend(vals.iter().cloned());
        }
        let first = |name: &str| values.get(&name.to_ascii_lowercase()).and_then(|v| v.first().cloned());
        Ok(GroupEntry {
            cn: first("cn").unwrap_or_default(),
            sam: first("sAMAccountName").unwrap_or_default(),
            admin_count: first("adminCount").is_some_and(|v| v.trim() == "1"),
            critical: first("isCriticalSystemObject").is_some_and(|v| v.trim().eq_ignore_ascii_case("TRUE")),
            admin_description: first("adminDescription"),
            dn: entry.dn,
            guid,
            sid,
            values,
        })
    }

    fn current(&self, name: &str) -> &[String] {
        self.values.get(&name.to_ascii_lowercase()).map_or(&[], Vec::as_slice)
    }

    pub fn applied(&self) -> AppliedGroup {
        AppliedGroup {
            dn: self.dn.clone(),
            object_guid: self.guid.clone(),
            object_sid: self.sid.clone().unwrap_or_default(),
            sam_account_name: self.sam.clone(),
        }
    }
}

/// An attribute's bytes whether ldap3 filed it as text (valid UTF-8 by chance) or
/// as binary.
pub(crate) fn binary(entry: &SearchEntry, name: &str) -> Option<Vec<u8>> {
    let binary = entry
        .bin_attrs
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first().cloned());
    binary.or_else(|| {
        entry
            .attrs
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, values)| values.first())
            .map(|text| text.as_bytes().to_vec())
    })
}

/// Exchange recipient type values for the mail-enabled group flavours
/// (`msExchRecipientDisplayType`, `msExchRecipientTypeDetails`), from Exchange's
/// `RecipientTypeDetails`: a group whose mail routes to Exchange Online (it has a
/// `targetAddress`) is a RemoteGroupMailbox, which on-premises Exchange treats as a
/// pointer to the cloud group (mail to `targetAddress`, Autodiscover to the cloud)
/// instead of a list to expand locally.
fn recipient_types(group_type: GroupType, routes_to_cloud: bool) -> Option<(&'static str, &'static str)> {
    match group_type {
        GroupType::UniversalSecurity => None,
        // DistributionGroup (1), RemoteGroupMailbox (0x80000000000).
        GroupType::UniversalDistribution if routes_to_cloud => Some(("1", "8796093022208")),
        // DistributionGroup (1), MailUniversalDistributionGroup (0x100).
        GroupType::UniversalDistribution => Some(("1", "256")),
        // SecurityDistributionGroup (0x40000009), MailUniversalSecurityGroup (0x400;
        // 0x200 would be MailNonUniversalGroup).
        GroupType::UniversalMailEnabledSecurity => Some(("1073741833", "1024")),
    }
}

/// The address on-premises mail for a Microsoft 365 group is routed to: its Exchange
/// Online routing address (`…@<tenant>.mail.onmicrosoft.com`), else its initial
/// `…@<tenant>.onmicrosoft.com` address, when Graph lists one that is not the primary
/// (Autodiscover refuses a targetAddress equal to the primary SMTP address).
pub(crate) fn cloud_target_address(mail: &MailAttributes) -> Option<String> {
    let smtp = |p: &String| {
        let (prefix, address) = p.split_once(':')?;
        (prefix.eq_ignore_ascii_case("smtp") && prefix != "SMTP").then(|| address.to_string())
    };
    let secondary: Vec<String> = mail.proxy_addresses.iter().filter_map(smtp).collect();
    let ends = |suffix: &str| secondary.iter().find(|a| a.to_ascii_lowercase().ends_with(suffix)).cloned();
    ends(".mail.onmicrosoft.com").or_else(|| ends(".onmicrosoft.com")).map(|address| format!("SMTP:{address}"))
}

fn non_empty(value: &str) -> Vec<String> {
    if value.trim().is_empty() { Vec::new() } else { vec![value.to_string()] }
}

/// The attributes the writer owns on a group, with their desired values (empty = the
/// attribute must be absent). `adminDescription` is not here: it is the anchor the
/// group was found by, so it already matches.
fn managed_attributes(spec: &GroupSpec, caps: &Capabilities) -> Vec<(&'static str, Vec<String>)> {
    let mut attrs = vec![
        ("groupType", vec![spec.group_type.ad_group_type().to_string()]),
        ("displayName", non_empty(&spec.display_name)),
        ("description", spec.description.as_deref().map(non_empty).unwrap_or_default()),
    ];
    if caps.has_external_directory_object_id {
        attrs.push((EXTERNAL_ID, vec![spec.anchor.clone()]));
    }
    // Mail attributes are only managed when the command carries them; `None` leaves
    // whatever Exchange or an administrator put there alone.
    if let (Some(mail), true) = (&spec.mail, caps.has_exchange_schema) {
        attrs.push(("mail", mail.mail.as_deref().map(non_empty).unwrap_or_default()));
        attrs.push(("mailNickname", mail.mail_nickname.as_deref().map(non_empty).unwrap_or_default()));
        attrs.push(("proxyAddresses", mail.proxy_addresses.clone()));
        let target =
            (spec.group_type == GroupType::UniversalDistribution).then(|| cloud_target_address(mail)).flatten();
        let (display, details) = recipient_types(spec.group_type, target.is_some()).unzip();
        attrs.push((RECIPIENT_DISPLAY_TYPE, display.map(non_empty).unwrap_or_default()));
        attrs.push((RECIPIENT_TYPE_DETAILS, details.map(non_empty).unwrap_or_default()));
        attrs.push((TARGET_ADDRESS, target.into_iter().collect()));
    }
    attrs
}

/// Attributes of a group to be created.
pub(crate) fn new_group_attributes(spec: &GroupSpec, sam: &str, caps: &Capabilities) -> Vec<(String, HashSet<String>)> {
    let mut attrs = vec![
        ("objectClass".to_string(), HashSet::from(["group".to_string()])),
        ("sAMAccountName".to_string(), HashSet::from([sam.to_string()])),
        ("adminDescription".to_string(), HashSet::from([spec.anchor.clone()])),
    ];
    attrs.extend(
        managed_attributes(spec, caps)
            .into_iter()
            .filter(|(_, values)| !values.is_empty())
            .map(|(name, values)| (name.to_string(), values.into_iter().collect())),
    );
    attrs
}

/// Modifications that make `current` match `spec`; only attributes that differ.
/// `new_sam` is set when the current sAMAccountName is not one of the candidates.
pub(crate) fn attribute_changes(
    current: &GroupEntry,
    spec: &GroupSpec,
    caps: &Capabilities,
    new_sam: Option<&str>,
) -> Vec<Mod<String>> {
    let mut mods = Vec::new();
    if let Some(sam) = new_sam {
        mods.push(Mod::Replace("sAMAccountName".to_string(), HashSet::from([sam.to_string()])));
    }
    for (name, desired) in managed_attributes(spec, caps) {
        let have = current.current(name);
        let same = have.iter().collect::<BTreeSet<_>>() == desired.iter().collect::<BTreeSet<_>>();
        if same {
            continue;
        }
        if desired.is_empty() {
            mods.push(Mod::Delete(name.to_string(), HashSet::new()));
        } else {
            mods.push(Mod::Replace(name.to_string(), desired.into_iter().collect()));
        }
    }
    mods
}

#[cfg(test)]
mod tests {
    use super::*;
    use gwb_core::command::MailAttributes;

    fn caps(ext: bool, exchange: bool) -> Capabilities {
        Capabilities { has_external_directory_object_id: ext, has_exchange_schema: exchange, ..Capabilities::default() }
    }

    fn spec() -> GroupSpec {
        GroupSpec {
            object_id: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            anchor: "Group_0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            cn: "Sales".into(),
            parent_dn: "OU=Groups,DC=lab,DC=example".into(),
            sam_account_name_candidates: vec!["Sales".into()],
            group_type: GroupType::UniversalSecurity,
            display_name: "Sales".into(),
            description: Some("All of sales".into()),
            mail: None,
            on_premises_sid: None,
        }
    }

    fn entry(attrs: &[(&str, &[&str])]) -> GroupEntry {
        let mut e = SearchEntry {
            dn: "CN=Sales,OU=Groups,DC=lab,DC=example".into(),
            attrs: HashMap::new(),
            bin_attrs: HashMap::new(),
        };
        for (name, values) in attrs {
            e.attrs.insert((*name).into(), values.iter().map(|v| (*v).into()).collect());
        }
        e.bin_attrs.insert("objectGUID".into(), vec![vec![0xff; 16]]);
        match GroupEntry::from_search(e) {
            Ok(entry) => entry,
            Err(err) => panic!("{err}"),
        }
    }

    fn names(mods: &[Mod<String>]) -> Vec<String> {
        mods.iter()
            .map(|m| match m {
                Mod::Add(n, _) => format!("add {n}"),
                Mod::Delete(n, _) => format!("delete {n}"),
                Mod::Replace(n, _) => format!("replace {n}"),
                Mod::Increment(n, _) => format!("increment {n}"),
            })
            .collect()
    }

    #[test]
    fn new_group_has_anchor_and_type() {
        let attrs = new_group_attributes(&spec(), "Sales", &caps(true, false));
        let get = |n: &str| attrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(get("adminDescription"), Some(HashSet::from([spec().anchor])));
        assert_eq!(get(EXTERNAL_ID), Some(HashSet::from([spec().anchor])));
        assert_eq!(get("groupType"), Some(HashSet::from(["-2147483640".to_string()])));
        assert_eq!(get("mail"), None);
        let without = new_group_attributes(&spec(), "Sales", &caps(false, false));
        assert!(without.iter().all(|(k, _)| k != EXTERNAL_ID));
    }

    #[test]
    fn an_m365_group_with_a_cloud_routing_address_is_a_remote_group_mailbox() {
        let mut s = spec();
        s.group_type = GroupType::UniversalDistribution;
        s.mail = Some(MailAttributes {
            mail: Some("team@contoso.com".into()),
            mail_nickname: Some("team".into()),
            proxy_addresses: vec![
                "SMTP:team@contoso.com".into(),
                "smtp:team@contoso.onmicrosoft.com".into(),
                "smtp:team@contoso.mail.onmicrosoft.com".into(),
            ],
        });
        let attrs = managed_attributes(&s, &caps(true, true));
        let get = |n: &str| attrs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        assert_eq!(get(RECIPIENT_TYPE_DETAILS), Some(vec!["8796093022208".to_string()]));
        assert_eq!(get(RECIPIENT_DISPLAY_TYPE), Some(vec!["1".to_string()]));
        assert_eq!(get(TARGET_ADDRESS), Some(vec!["SMTP:team@contoso.mail.onmicrosoft.com".to_string()]));
        // Without a routing address, the initial onmicrosoft.com address; with none at
        // all, a classic distribution group that Exchange expands locally.
        let mut only_moera = s.clone();
        if let Some(mail) = only_moera.mail.as_mut() {
            mail.proxy_addresses.pop();
        }
        let attrs = managed_attributes(&only_moera, &caps(true, true));
        let get = |n: &str| attrs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        assert_eq!(get(TARGET_ADDRESS), Some(vec!["SMTP:team@contoso.onmicrosoft.com".to_string()]));
        let mut on_premises_only = s.clone();
        if let Some(mail) = on_premises_only.mail.as_mut() {
            mail.proxy_addresses.truncate(1);
        }
        let attrs = managed_attributes(&on_premises_only, &caps(true, true));
        let get = |n: &str| attrs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        assert_eq!(get(RECIPIENT_TYPE_DETAILS), Some(vec!["256".to_string()]));
        assert_eq!(get(TARGET_ADDRESS), Some(Vec::new()));
        // Mail-enabled security is MailUniversalSecurityGroup (1024), never a remote mailbox.
        let mut security = s.clone();
        security.group_type = GroupType::UniversalMailEnabledSecurity;
        let attrs = managed_attributes(&security, &caps(true, true));
        let get = |n: &str| attrs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        assert_eq!(get(RECIPIENT_TYPE_DETAILS), Some(vec!["1024".to_string()]));
        assert_eq!(get(TARGET_ADDRESS), Some(Vec::new()));
    }

    #[test]
    fn mail_attributes_only_with_exchange() {
        let mut s = spec();
        s.group_type = GroupType::UniversalDistribution;
        s.mail = Some(MailAttributes {
            mail: Some("sales@example.com".into()),
            mail_nickname: Some("sales".into()),
            proxy_addresses: vec!["SMTP:sales@example.com".into(), "smtp:s@example.com".into()],
        });
        let with = new_group_attributes(&s, "Sales", &caps(true, true));
        let get = |n: &str| with.iter().find(|(k, _)| k == n).map(|(_, v)| v.len());
        assert_eq!(get("proxyAddresses"), Some(2));
        assert_eq!(get(RECIPIENT_TYPE_DETAILS), Some(1));
        assert_eq!(get("groupType"), Some(1));
        let without = new_group_attributes(&s, "Sales", &caps(true, false));
        assert!(without.iter().all(|(k, _)| k != "mail" && k != "proxyAddresses"));
    }

    #[test]
    fn identical_group_needs_nothing() {
        let e = entry(&[
            ("groupType", &["-2147483640"]),
            ("displayName", &["Sales"]),
            ("description", &["All of sales"]),
            (EXTERNAL_ID, &["Group_0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"]),
        ]);
        assert!(attribute_changes(&e, &spec(), &caps(true, false), None).is_empty());
    }

    #[test]
    fn only_differences_are_written() {
        let e =
            entry(&[("groupType", &["-2147483640"]), ("displayName", &["Old"]), ("description", &["All of sales"])]);
        let mods = attribute_changes(&e, &spec(), &caps(true, false), Some("Sales2"));
        assert_eq!(
            names(&mods),
            vec!["replace sAMAccountName", "replace displayName", format!("replace {EXTERNAL_ID}").as_str()]
        );
    }

    #[test]
    fn description_removed_when_none() {
        let e = entry(&[("groupType", &["-2147483640"]), ("displayName", &["Sales"]), ("description", &["stale"])]);
        let mut s = spec();
        s.description = None;
        assert_eq!(names(&attribute_changes(&e, &s, &caps(false, false), None)), vec!["delete description"]);
        let e = entry(&[("groupType", &["-2147483640"]), ("displayName", &["Sales"])]);
        assert!(attribute_changes(&e, &s, &caps(false, false), None).is_empty());
    }

    #[test]
    fn proxy_addresses_compare_as_a_set() {
        let mut s = spec();
        s.group_type = GroupType::UniversalMailEnabledSecurity;
        s.mail = Some(MailAttributes {
            mail: Some("a@x".into()),
            mail_nickname: None,
            proxy_addresses: vec!["SMTP:a@x".into(), "smtp:b@x".into()],
        });
        let e = entry(&[
            ("groupType", &["-2147483640"]),
            ("displayName", &["Sales"]),
            ("description", &["All of sales"]),
            ("mail", &["a@x"]),
            ("proxyAddresses", &["smtp:b@x", "SMTP:a@x"]),
            (RECIPIENT_DISPLAY_TYPE, &["1073741833"]),
            (RECIPIENT_TYPE_DETAILS, &["1024"]),
        ]);
        assert!(attribute_changes(&e, &s, &caps(false, true), None).is_empty());
    }

    #[test]
    fn flags_are_parsed() {
        let e = entry(&[("adminCount", &["1"]), ("isCriticalSystemObject", &["TRUE"])]);
        assert!(e.admin_count && e.critical);
        assert_eq!(e.guid, "ffffffff-ffff-ffff-ffff-ffffffffffff");
    }
}
