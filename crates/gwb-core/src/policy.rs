//! Which cloud groups are written back, as what, and where (DESIGN.md §3).

use std::collections::BTreeSet;

use crate::command::{GroupSpec, GroupType, MailAttributes};
use crate::naming::{self, NameTemplate};

/// A cloud group as the planner knows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CloudGroup {
    pub id: String,
    pub display_name: String,
    pub description: Option<String>,
    pub mail_nickname: Option<String>,
    pub mail: Option<String>,
    pub mail_enabled: bool,
    pub security_enabled: bool,
    pub group_types: Vec<String>,
    pub proxy_addresses: Vec<String>,
    pub on_premises_sync_enabled: Option<bool>,
    /// `onPremisesSecurityIdentifier`: the SID of the AD group it came from, if any.
    pub on_premises_sid: Option<String>,
    /// Beta `writebackConfiguration.isEnabled`.
    pub writeback_enabled: Option<bool>,
    /// Beta `writebackConfiguration.onPremisesGroupType`.
    pub writeback_group_type: Option<String>,
}

impl CloudGroup {
    pub fn is_microsoft_365(&self) -> bool {
        self.group_types.iter().any(|t| t.eq_ignore_ascii_case("Unified"))
    }
}

/// Scope rules: a group is in scope when any rule matches.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scope {
    pub all_security_groups: bool,
    pub all_microsoft_365_groups: bool,
    pub group_ids: BTreeSet<String>,
    pub display_name_prefixes: Vec<String>,
}

impl Scope {
    fn matches(&self, group: &CloudGroup) -> bool {
        (self.all_security_groups && group.security_enabled && !group.is_microsoft_365())
            || (self.all_microsoft_365_groups && group.is_microsoft_365())
            || self.group_ids.contains(&group.id.to_ascii_lowercase())
            || self.display_name_prefixes.iter().any(|p| group.display_name.starts_with(p.as_str()))
    }
}

/// Operator's per-group settings; each set field wins over everything else.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupOverride {
    pub enabled: Option<bool>,
    pub group_type: Option<GroupType>,
    pub parent_dn: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub default_ou: String,
    pub security_ou: Option<String>,
    pub distribution_ou: Option<String>,
    pub name_template: NameTemplate,
}

/// What the directory can hold, as the writer discovered it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirectorySchema {
    pub has_exchange: bool,
    /// Why the writers refuse mail-enabled groups in this forest although its schema has
    /// Exchange's attributes (a schema-only forest, a schema too old for Microsoft 365
    /// groups, a missing attribute), as they reported it; `None` when they accept them
    /// or never said.
    pub mail_refusal: Option<String>,
}

// A decision lives for one planning step; boxing the spec would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Write(GroupSpec),
    /// Not written back, with the reason shown to the operator.
    Skip(String),
}

/// AD's `rangeUpper` of `displayName` and `description`: longer values are refused
/// with a constraint violation, so they are cut here.
pub const DISPLAY_NAME_MAX_CHARS: usize = 256;
pub const DESCRIPTION_MAX_CHARS: usize = 1024;

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// Decides one group. Order matters: loop prevention and Exchange gating can not be
/// overridden; the operator's override beats Graph's writebackConfiguration, which
/// beats the scope rules.
pub fn decide(
    group: &CloudGroup,
    over: &GroupOverride,
    scope: &Scope,
    placement: &Placement,
    schema: DirectorySchema,
) -> Decision {
    if group.on_premises_sync_enabled == Some(true) {
        return Decision::Skip("synced from on-premises AD: writing it back would loop".into());
    }
    let is_m365 = group.is_microsoft_365();
    if !is_m365 && group.mail_enabled && !group.security_enabled {
        return Decision::Skip(
            "cloud distribution lists are not written back (Microsoft 365 and security groups only)".into(),
        );
    }
    let enabled = over
        .enabled
        .map(|e| (e, "operator override"))
        .or(group.writeback_enabled.map(|e| (e, "writebackConfiguration.isEnabled")))
        .unwrap_or_else(|| (scope.matches(group), "scope rules"));
    if !enabled.0 {
        return Decision::Skip(format!("writeback not enabled for this group ({})", enabled.1));
    }
    let requested =
        over.group_type.or_else(|| group.writeback_group_type.as_deref().and_then(GroupType::from_graph_name));
    let group_type = match requested {
        Some(t) => t,
        None if is_m365 => GroupType::UniversalDistribution,
        None => GroupType::UniversalSecurity,
    };
    if !is_m365 && group_type != GroupType::UniversalSecurity {
        return Decision::Skip(format!(
            "a security group can only be written back as universalSecurityGroup, not {group_type}"
        ));
    }
    if group_type.needs_exchange() && !schema.has_exchange {
        return Decision::Skip(format!(
            "writing back as {group_type} needs the Exchange schema in AD, and it was not found in the schema naming context; \
             write it back as universalSecurityGroup or extend the schema"
        ));
    }
    if group_type.needs_exchange()
        && let Some(refusal) = &schema.mail_refusal
    {
        return Decision::Skip(format!(
            "writing back as {group_type} is refused in this forest: {refusal}; write it back as \
             universalSecurityGroup or prepare the forest for Exchange"
        ));
    }
    let parent_dn = over.parent_dn.clone().unwrap_or_else(|| {
        let per_type = if group_type == GroupType::UniversalDistribution {
            placement.distribution_ou.clone()
        } else {
            placement.security_ou.clone()
        };
        per_type.unwrap_or_else(|| placement.default_ou.clone())
    });
    let mail = if group_type.needs_exchange() {
        Some(MailAttributes {
            mail: group.mail.clone(),
            mail_nickname: group.mail_nickname.clone(),
            proxy_addresses: mail_proxy_addresses(&group.proxy_addresses),
        })
    } else if is_m365 && schema.has_exchange {
        // A Microsoft 365 group written as plain security into an Exchange forest is no
        // mail recipient there: the mail attributes gwb wrote when it was another type
        // are removed (all empty), instead of leaving a security group that Exchange
        // reads as a RemoteGroupMailbox.
        Some(MailAttributes::default())
    } else {
        None
    };
    Decision::Write(GroupSpec {
        object_id: group.id.to_ascii_lowercase(),
        anchor: naming::anchor(&group.id),
        cn: naming::cn(placement.name_template, &group.display_name, &group.id),
        parent_dn,
        sam_account_name_candidates: naming::sam_account_name_candidates(&group.display_name, &group.id),
        group_type,
        display_name: truncate(&group.display_name, DISPLAY_NAME_MAX_CHARS),
        description: group.description.as_deref().filter(|d| !d.is_empty()).map(|d| truncate(d, DESCRIPTION_MAX_CHARS)),
        mail,
        // Not synced any more but still carrying its AD group's SID: converted to the
        // cloud (Group Source of Authority) or sync switched off. The writer must not
        // create a second group beside the original (F3).
        on_premises_sid: group.on_premises_sid.clone().filter(|sid| !sid.trim().is_empty()),
    })
}

/// The proxy addresses written to AD: every SMTP address (primary `SMTP:` and secondary
/// `smtp:`; Microsoft's own writeback keeps the primary only, so secondary addresses
/// would not resolve on-premises) and X500 addresses; never other types (`SPO:`,
/// `SIP:`…), which mean nothing to on-premises Exchange and would become custom
/// proxy types. Duplicates (case-insensitive) are dropped.
pub fn mail_proxy_addresses(addresses: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    addresses
        .iter()
        .filter(|address| {
            address.split_once(':').is_some_and(|(prefix, value)| {
                !value.is_empty() && (prefix.eq_ignore_ascii_case("smtp") || prefix.eq_ignore_ascii_case("x500"))
            })
        })
        .filter(|address| seen.insert(address.to_ascii_lowercase()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_smtp_and_x500_proxy_addresses_are_written() {
        let addresses: Vec<String> = [
            "SMTP:team@contoso.com",
            "smtp:team@contoso.mail.onmicrosoft.com",
            "SPO:SPO_1234@SPO_5678",
            "SIP:team@contoso.com",
            "X500:/o=ExchangeLabs/ou=Exchange Administrative Group/cn=Recipients/cn=team",
            "smtp:TEAM@contoso.com",
            "smtp:",
            "nonsense",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        assert_eq!(
            super::mail_proxy_addresses(&addresses),
            vec![
                "SMTP:team@contoso.com".to_string(),
                "smtp:team@contoso.mail.onmicrosoft.com".to_string(),
                "X500:/o=ExchangeLabs/ou=Exchange Administrative Group/cn=Recipients/cn=team".to_string(),
            ]
        );
    }

    use super::*;

    fn placement() -> Placement {
        Placement {
            default_ou: "OU=WB,DC=lab".into(),
            security_ou: None,
            distribution_ou: Some("OU=DL,DC=lab".into()),
            name_template: NameTemplate::ObjectId,
        }
    }

    fn security(id: &str) -> CloudGroup {
        CloudGroup { id: id.into(), display_name: "Sec".into(), security_enabled: true, ..Default::default() }
    }

    fn m365(id: &str) -> CloudGroup {
        CloudGroup {
            id: id.into(),
            display_name: "Team".into(),
            mail_enabled: true,
            group_types: vec!["Unified".into()],
            ..Default::default()
        }
    }

    fn all_security() -> Scope {
        Scope { all_security_groups: true, ..Default::default() }
    }

    #[test]
    fn security_group_in_scope_is_written_as_universal_security() {
        let Decision::Write(spec) = decide(
            &security("ID1"),
            &GroupOverride::default(),
            &all_security(),
            &placement(),
            DirectorySchema::default(),
        ) else {
            panic!("expected write")
        };
        assert_eq!(spec.group_type, GroupType::UniversalSecurity);
        assert_eq!(spec.anchor, "Group_id1");
        assert_eq!(spec.parent_dn, "OU=WB,DC=lab");
        assert!(spec.mail.is_none());
    }

    /// F3: a group converted from AD keeps its AD group's SID; the spec carries it so
    /// the writer finds the original instead of creating a second group.
    #[test]
    fn a_converted_group_carries_its_ad_sid_to_the_writer() {
        let mut g = security("a");
        g.on_premises_sid = Some("S-1-5-21-1-2-3-1109".into());
        let write = |g: &CloudGroup| match decide(
            g,
            &GroupOverride::default(),
            &all_security(),
            &placement(),
            DirectorySchema::default(),
        ) {
            Decision::Write(spec) => spec,
            Decision::Skip(reason) => panic!("skipped: {reason}"),
        };
        assert_eq!(write(&g).on_premises_sid.as_deref(), Some("S-1-5-21-1-2-3-1109"));
        assert_eq!(write(&security("a")).on_premises_sid, None);
        assert_ne!(write(&g).fingerprint(), write(&security("a")).fingerprint());
        g.on_premises_sync_enabled = Some(true);
        assert!(matches!(
            decide(&g, &GroupOverride::default(), &all_security(), &placement(), DirectorySchema::default()),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn synced_from_ad_never_written_even_with_override() {
        let mut g = security("a");
        g.on_premises_sync_enabled = Some(true);
        let over = GroupOverride { enabled: Some(true), ..Default::default() };
        assert!(
            matches!(decide(&g, &over, &all_security(), &placement(), DirectorySchema::default()), Decision::Skip(r) if r.contains("loop"))
        );
    }

    #[test]
    fn precedence_override_then_writeback_configuration_then_scope() {
        let mut g = security("a");
        g.writeback_enabled = Some(false);
        assert!(matches!(
            decide(&g, &GroupOverride::default(), &all_security(), &placement(), DirectorySchema::default()),
            Decision::Skip(_)
        ));
        let over = GroupOverride { enabled: Some(true), ..Default::default() };
        assert!(matches!(
            decide(&g, &over, &Scope::default(), &placement(), DirectorySchema::default()),
            Decision::Write(_)
        ));
        let out = GroupOverride { enabled: Some(false), ..Default::default() };
        assert!(
            matches!(decide(&security("a"), &out, &all_security(), &placement(), DirectorySchema::default()), Decision::Skip(r) if r.contains("operator"))
        );
    }

    #[test]
    fn a_forest_the_writers_refuse_skips_mail_enabled_types_with_their_reason() {
        let scope = Scope { all_microsoft_365_groups: true, ..Default::default() };
        let schema_only = DirectorySchema {
            has_exchange: true,
            mail_refusal: Some("the forest has the Exchange 2019 CU10+ schema only, no Exchange organisation".into()),
        };
        let refused = decide(&m365("b"), &GroupOverride::default(), &scope, &placement(), schema_only.clone());
        assert!(
            matches!(&refused, Decision::Skip(r) if r.contains("refused in this forest") && r.contains("schema only, no Exchange organisation")),
            "{refused:?}"
        );
        let mail_security =
            GroupOverride { group_type: Some(GroupType::UniversalMailEnabledSecurity), ..Default::default() };
        assert!(matches!(
            decide(&m365("b"), &mail_security, &scope, &placement(), schema_only.clone()),
            Decision::Skip(r) if r.contains("schema only")
        ));
        // Security is no mail type: still written, with no mail attributes (all empty:
        // whatever gwb wrote as another type is removed).
        let as_security = GroupOverride { group_type: Some(GroupType::UniversalSecurity), ..Default::default() };
        assert!(matches!(
            decide(&m365("b"), &as_security, &scope, &placement(), schema_only),
            Decision::Write(spec) if spec.mail == Some(MailAttributes::default())
        ));
    }

    /// Cloud mail-enabled security groups (Microsoft's writeback does not take them) are
    /// written as plain universal security groups, with no mail attributes: their access
    /// is what on-premises resources need, and their mail stays with Exchange Online.
    #[test]
    fn a_cloud_mail_enabled_security_group_is_written_as_plain_security() {
        let group = CloudGroup {
            id: "m".into(),
            display_name: "Mail Sec".into(),
            mail_enabled: true,
            security_enabled: true,
            mail: Some("mailsec@contoso.com".into()),
            mail_nickname: Some("mailsec".into()),
            proxy_addresses: vec!["SMTP:mailsec@contoso.com".into()],
            ..Default::default()
        };
        let exchange = DirectorySchema { has_exchange: true, ..Default::default() };
        let Decision::Write(spec) =
            decide(&group, &GroupOverride::default(), &all_security(), &placement(), exchange.clone())
        else {
            panic!("not written")
        };
        assert_eq!((spec.group_type, spec.mail), (GroupType::UniversalSecurity, None));
        let as_mail = GroupOverride { group_type: Some(GroupType::UniversalMailEnabledSecurity), ..Default::default() };
        assert!(matches!(
            decide(&group, &as_mail, &all_security(), &placement(), exchange),
            Decision::Skip(r) if r.contains("only be written back as universalSecurityGroup")
        ));
    }

    #[test]
    fn microsoft_365_needs_exchange_for_distribution() {
        let scope = Scope { all_microsoft_365_groups: true, ..Default::default() };
        let refused = decide(
            &m365("b"),
            &GroupOverride::default(),
            &scope,
            &placement(),
            DirectorySchema { has_exchange: false, ..Default::default() },
        );
        assert!(matches!(&refused, Decision::Skip(r) if r.contains("Exchange schema")), "{refused:?}");
        let Decision::Write(spec) = decide(
            &m365("b"),
            &GroupOverride::default(),
            &scope,
            &placement(),
            DirectorySchema { has_exchange: true, ..Default::default() },
        ) else {
            panic!()
        };
        assert_eq!(spec.group_type, GroupType::UniversalDistribution);
        assert_eq!(spec.parent_dn, "OU=DL,DC=lab");
        assert!(spec.mail.is_some());
        let as_security = GroupOverride { group_type: Some(GroupType::UniversalSecurity), ..Default::default() };
        assert!(matches!(
            decide(&m365("b"), &as_security, &scope, &placement(), DirectorySchema::default()),
            Decision::Write(_)
        ));
    }

    #[test]
    fn security_group_cannot_become_distribution_and_dls_are_refused() {
        let over = GroupOverride { group_type: Some(GroupType::UniversalDistribution), ..Default::default() };
        assert!(matches!(
            decide(
                &security("a"),
                &over,
                &all_security(),
                &placement(),
                DirectorySchema { has_exchange: true, ..Default::default() }
            ),
            Decision::Skip(_)
        ));
        let dl = CloudGroup { id: "d".into(), mail_enabled: true, ..Default::default() };
        assert!(
            matches!(decide(&dl, &GroupOverride::default(), &all_security(), &placement(), DirectorySchema::default()), Decision::Skip(r) if r.contains("distribution lists"))
        );
    }

    #[test]
    fn over_long_attributes_are_cut_to_ad_limits() {
        let mut g = security("a");
        g.display_name = "n".repeat(400);
        g.description = Some("d".repeat(2000));
        let Decision::Write(spec) =
            decide(&g, &GroupOverride::default(), &all_security(), &placement(), DirectorySchema::default())
        else {
            panic!()
        };
        assert_eq!(spec.display_name.chars().count(), DISPLAY_NAME_MAX_CHARS);
        assert_eq!(spec.description.map(|d| d.chars().count()), Some(DESCRIPTION_MAX_CHARS));
    }

    #[test]
    fn prefix_and_id_scopes() {
        let scope = Scope { display_name_prefixes: vec!["Se".into()], ..Default::default() };
        assert!(matches!(
            decide(&security("a"), &GroupOverride::default(), &scope, &placement(), DirectorySchema::default()),
            Decision::Write(_)
        ));
        let scope = Scope { group_ids: ["x".to_string()].into(), ..Default::default() };
        assert!(matches!(
            decide(&security("X"), &GroupOverride::default(), &scope, &placement(), DirectorySchema::default()),
            Decision::Write(_)
        ));
        assert!(matches!(
            decide(&security("y"), &GroupOverride::default(), &scope, &placement(), DirectorySchema::default()),
            Decision::Skip(_)
        ));
    }
}
