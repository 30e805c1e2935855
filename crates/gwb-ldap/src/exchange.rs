//! Exchange detection, the way Exchange itself does it, and the decision whether
//! Microsoft 365 groups may be written back.
//!
//! Three reads, all at connect time:
//! 1. the `rangeUpper` of the attributeSchema object `ms-Exch-Schema-Version-Pt` in the
//!    schema NC: the schema version `/PrepareSchema` left (Exchange setup and its
//!    hybrid check read exactly this; ≥ 15137 is Exchange 2013 or later);
//! 2. the organisation container(s) (`objectClass=msExchOrganizationContainer`) under
//!    `CN=Microsoft Exchange,CN=Services,<configuration NC>`, which `/PrepareAD`
//!    creates, with their `objectVersion`, and how many Exchange servers each has;
//! 3. whether every attribute gwb writes on mail-enabled groups exists in the schema.
//!
//! The classification below is pure, so it is unit-tested without a directory.

use std::fmt;

/// The attributeSchema object whose `rangeUpper` is the Exchange schema version.
pub const SCHEMA_VERSION_CN: &str = "ms-Exch-Schema-Version-Pt";
/// Object class of the organisation container `/PrepareAD` creates.
pub const ORGANIZATION_CLASS: &str = "msExchOrganizationContainer";
/// Object class of an Exchange server's object (under the organisation's admin groups).
pub const SERVER_CLASS: &str = "msExchExchangeServer";
/// The parent of the organisation containers, relative to the configuration NC.
pub const EXCHANGE_SERVICES_RDN: &str = "CN=Microsoft Exchange,CN=Services";

/// The attributes gwb writes on a mail-enabled group. If any one is missing from the
/// schema, objects would be written half-way, so Microsoft 365 groups are refused.
/// `mail` and `proxyAddresses` are base AD; the rest come with Exchange's schema.
pub const WRITTEN_ATTRIBUTES: [&str; 6] = [
    "mail",
    "proxyAddresses",
    "mailNickname",
    "targetAddress",
    "msExchRecipientTypeDetails",
    "msExchRecipientDisplayType",
];

/// The two of [`WRITTEN_ATTRIBUTES`] that every AD schema has.
const BASE_AD_ATTRIBUTES: [&str; 2] = ["mail", "proxyAddresses"];

/// rangeUpper of Exchange 2013 RTM: from here on Exchange calls the forest "2013 or
/// later" (its hybrid configuration check uses this threshold).
pub const EXCHANGE_2013_SCHEMA: u32 = 15137;
/// rangeUpper shared by Exchange 2013 CU7 up to CU23: the schema alone cannot tell
/// CU11 (the minimum for Microsoft 365 groups) from CU7–CU10.
pub const EXCHANGE_2013_CU7_SCHEMA: u32 = 15312;
/// rangeUpper of Exchange 2016 RTM.
pub const EXCHANGE_2016_RTM_SCHEMA: u32 = 15317;
/// rangeUpper of Exchange 2016 CU1, the 2016 minimum for Microsoft 365 groups.
pub const EXCHANGE_2016_CU1_SCHEMA: u32 = 15323;
/// Organisation objectVersion of Exchange 2013 CU10 and later: the closest the
/// directory gets to "2013 CU11+" (CU10 and CU11 share it).
pub const EXCHANGE_2013_CU10_ORGANIZATION_VERSION: u32 = 16130;

/// Known `ms-Exch-Schema-Version-Pt` rangeUpper values, ascending, as Microsoft's
/// "prepare AD" tables name them (see `../shared/reference/exchange-writeback.md` §2).
const SCHEMA_VERSIONS: [(u32, &str); 30] = [
    (4397, "Exchange 2000 RTM"),
    (4406, "Exchange 2000 SP3"),
    (6870, "Exchange 2003"),
    (10637, "Exchange 2007 RTM"),
    (11116, "Exchange 2007 SP1"),
    (14622, "Exchange 2007 SP2 / Exchange 2010 RTM"),
    (14625, "Exchange 2007 SP3"),
    (14726, "Exchange 2010 SP1"),
    (14732, "Exchange 2010 SP2"),
    (14734, "Exchange 2010 SP3"),
    (15137, "Exchange 2013 RTM"),
    (15254, "Exchange 2013 CU1"),
    (15281, "Exchange 2013 CU2"),
    (15283, "Exchange 2013 CU3"),
    (15292, "Exchange 2013 SP1"),
    (15300, "Exchange 2013 CU5"),
    (15303, "Exchange 2013 CU6"),
    (15312, "Exchange 2013 CU7–CU23"),
    (15317, "Exchange 2016 RTM"),
    (15323, "Exchange 2016 CU1"),
    (15325, "Exchange 2016 CU2"),
    (15326, "Exchange 2016 CU3–CU5"),
    (15330, "Exchange 2016 CU6"),
    (15332, "Exchange 2016 CU7–CU18"),
    (15333, "Exchange 2016 CU19–CU20"),
    (15334, "Exchange 2016 CU21–CU23"),
    (17000, "Exchange 2019 RTM–CU1"),
    (17001, "Exchange 2019 CU2–CU7"),
    (17002, "Exchange 2019 CU8–CU9"),
    (17003, "Exchange 2019 CU10+"),
];

/// The Exchange release a schema version stands for, named as Microsoft's tables do
/// ("Exchange 2019 CU10+" for 17003). A value between two known ones (or past the
/// last) is named after the release below it.
pub fn schema_label(version: u32) -> String {
    match SCHEMA_VERSIONS.iter().rev().find(|(known, _)| *known <= version) {
        Some((known, label)) if *known == version => (*label).to_string(),
        Some((_, label)) => format!("Exchange schema {version} (later than {label})"),
        None => format!("Exchange schema {version} (older than Exchange 2000)"),
    }
}

/// What the forest has of Exchange, in the three states detection tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangePresence {
    /// No Exchange schema version (`/PrepareSchema` never ran).
    None,
    /// The schema is prepared but no organisation exists (`/PrepareAD` never ran).
    SchemaOnly,
    /// Schema and organisation; Exchange servers may or may not exist.
    Organization,
}

impl ExchangePresence {
    /// `none`, `schema` or `org` (the lab's `GWB_LAB_EXCHANGE` values).
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangePresence::None => "none",
            ExchangePresence::SchemaOnly => "schema",
            ExchangePresence::Organization => "org",
        }
    }
}

/// What was found of Exchange in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeDetection {
    /// `rangeUpper` of `ms-Exch-Schema-Version-Pt`; `None` without an Exchange schema.
    pub schema_version: Option<u32>,
    /// The release the schema version stands for ("Exchange 2019 CU10+"), or "none".
    pub schema_label: String,
    /// The organisation's name (the cn of its msExchOrganizationContainer).
    pub organization: Option<String>,
    /// The organisation container's `objectVersion`.
    pub organization_version: Option<u32>,
    /// Exchange server objects in the organisation. Zero is normal in a hybrid forest
    /// that keeps only the management tools, and does not block writeback.
    pub servers: usize,
    /// Further organisation containers (Exchange allows one per forest; more mean a
    /// damaged or hand-made configuration). The first by name is `organization`.
    pub other_organizations: Vec<String>,
    /// Attributes of [`WRITTEN_ATTRIBUTES`] the schema lacks.
    pub missing_attributes: Vec<String>,
}

impl Default for ExchangeDetection {
    /// Nothing detected: no schema, no organisation, no attribute known to exist.
    fn default() -> Self {
        ExchangeDetection::classify(None, Vec::new(), WRITTEN_ATTRIBUTES.iter().map(|a| a.to_string()).collect())
    }
}

/// An organisation container as read from the configuration NC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundOrganization {
    pub name: String,
    pub object_version: Option<u32>,
    pub servers: usize,
}

impl ExchangeDetection {
    /// Classifies what the directory holds: the schema version (if the
    /// `ms-Exch-Schema-Version-Pt` object exists), the organisation containers found,
    /// and the [`WRITTEN_ATTRIBUTES`] the schema lacks.
    pub fn classify(
        schema_version: Option<u32>,
        mut organizations: Vec<FoundOrganization>,
        missing_attributes: Vec<String>,
    ) -> ExchangeDetection {
        organizations.sort_by_key(|o| o.name.to_lowercase());
        let mut organizations = organizations.into_iter();
        let first = organizations.next();
        ExchangeDetection {
            schema_version,
            schema_label: schema_version.map_or_else(|| "none".to_string(), schema_label),
            organization_version: first.as_ref().and_then(|o| o.object_version),
            servers: first.as_ref().map_or(0, |o| o.servers),
            organization: first.map(|o| o.name),
            other_organizations: organizations.map(|o| o.name).collect(),
            missing_attributes,
        }
    }

    /// Some attribute that only Exchange's schema defines (mailNickname,
    /// msExchRecipientTypeDetails, …) exists.
    pub fn has_exchange_attributes(&self) -> bool {
        WRITTEN_ATTRIBUTES
            .iter()
            .filter(|a| !BASE_AD_ATTRIBUTES.contains(a))
            .any(|a| !self.missing_attributes.iter().any(|m| m.eq_ignore_ascii_case(a)))
    }

    pub fn presence(&self) -> ExchangePresence {
        match (self.schema_version, &self.organization) {
            (None, _) => ExchangePresence::None,
            (Some(_), None) => ExchangePresence::SchemaOnly,
            (Some(_), Some(_)) => ExchangePresence::Organization,
        }
    }

    /// The schema is Exchange 2013 or later (rangeUpper ≥ 15137), as Exchange's own
    /// hybrid check classes it.
    pub fn is_2013_or_later(&self) -> bool {
        self.schema_version.is_some_and(|v| v >= EXCHANGE_2013_SCHEMA)
    }

    /// One line for status output: "Exchange 2019 CU10+ schema, organisation Contoso
    /// (objectVersion 16759, no Exchange servers)", "Exchange 2019 CU10+ schema only,
    /// no organisation", or "none".
    pub fn description(&self) -> String {
        let mut line = match (&self.schema_version, &self.organization) {
            (None, _) if self.has_exchange_attributes() => {
                // Some Exchange attributes but no schema version: not what setup leaves.
                format!("none (Exchange attributes present, but no {SCHEMA_VERSION_CN})")
            }
            (None, Some(org)) => format!("none (organisation {org} without an Exchange schema)"),
            (None, None) => "none".to_string(),
            (Some(_), None) => format!("{} schema only, no organisation", self.schema_label),
            (Some(_), Some(org)) => {
                let version = self
                    .organization_version
                    .map_or_else(|| "no objectVersion".to_string(), |version| format!("objectVersion {version}"));
                let servers = match self.servers {
                    0 => "no Exchange servers".to_string(),
                    1 => "1 Exchange server".to_string(),
                    n => format!("{n} Exchange servers"),
                };
                format!("{} schema, organisation {org} ({version}, {servers})", self.schema_label)
            }
        };
        if !self.other_organizations.is_empty() {
            line.push_str(&format!("; further organisation containers: {}", self.other_organizations.join(", ")));
        }
        if self.schema_version.is_some() && !self.missing_attributes.is_empty() {
            line.push_str(&format!("; missing attributes: {}", self.missing_attributes.join(", ")));
        }
        line
    }

    /// Whether Microsoft 365 groups may be written back (as Exchange's
    /// RemoteGroupMailbox): Exchange 2016 CU1+ or 2013 CU11+ schema, every attribute
    /// gwb writes present, and an organisation. Exchange servers are not required (a
    /// hybrid forest with only the management tools is normal).
    ///
    /// 2013 CU7–CU23 share one schema version, so for a 2013 schema the organisation's
    /// objectVersion decides: ≥ 16130 (CU10 and later; the directory cannot tell CU10
    /// from CU11) is accepted.
    pub fn m365_group_writeback(&self) -> Result<(), M365WritebackRefusal> {
        let Some(version) = self.schema_version else {
            return Err(if self.has_exchange_attributes() {
                M365WritebackRefusal::NoSchemaVersion
            } else {
                M365WritebackRefusal::NoExchangeSchema
            });
        };
        let too_old = version < EXCHANGE_2013_CU7_SCHEMA
            || (EXCHANGE_2016_RTM_SCHEMA..EXCHANGE_2016_CU1_SCHEMA).contains(&version);
        if too_old {
            return Err(M365WritebackRefusal::SchemaTooOld { version, label: self.schema_label.clone() });
        }
        if !self.missing_attributes.is_empty() {
            return Err(M365WritebackRefusal::MissingAttributes(self.missing_attributes.clone()));
        }
        if self.organization.is_none() {
            return Err(M365WritebackRefusal::NoOrganization { label: self.schema_label.clone() });
        }
        if version < EXCHANGE_2016_RTM_SCHEMA
            && self.organization_version.is_none_or(|v| v < EXCHANGE_2013_CU10_ORGANIZATION_VERSION)
        {
            return Err(M365WritebackRefusal::OrganizationTooOld {
                organization: self.organization.clone().unwrap_or_default(),
                object_version: self.organization_version,
            });
        }
        Ok(())
    }
}

/// Why Microsoft 365 groups are not written back into this forest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum M365WritebackRefusal {
    /// No `ms-Exch-Schema-Version-Pt` and no Exchange attributes.
    NoExchangeSchema,
    /// Some Exchange attributes, but no `ms-Exch-Schema-Version-Pt`: the schema was not
    /// prepared by Exchange setup.
    NoSchemaVersion,
    /// The schema predates what Microsoft 365 groups need.
    SchemaTooOld { version: u32, label: String },
    /// The schema lacks attributes gwb writes.
    MissingAttributes(Vec<String>),
    /// `/PrepareSchema` without `/PrepareAD`: nothing in the forest uses the attributes.
    NoOrganization { label: String },
    /// A 2013 CU7–CU23 schema whose organisation is older than 2013 CU10 (or has no
    /// objectVersion).
    OrganizationTooOld { organization: String, object_version: Option<u32> },
}

impl fmt::Display for M365WritebackRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NEEDS: &str = "Microsoft 365 groups need Exchange 2016 CU1 or later, or Exchange 2013 CU11 or later";
        match self {
            M365WritebackRefusal::NoExchangeSchema => {
                write!(f, "the forest has no Exchange schema ({SCHEMA_VERSION_CN} not found); {NEEDS}")
            }
            M365WritebackRefusal::NoSchemaVersion => write!(
                f,
                "the schema has some Exchange attributes but no {SCHEMA_VERSION_CN}: it was not prepared by \
                 Exchange setup (/PrepareSchema); {NEEDS}"
            ),
            M365WritebackRefusal::SchemaTooOld { version, label } => {
                write!(f, "the Exchange schema is {label} ({SCHEMA_VERSION_CN} rangeUpper {version}); {NEEDS}")
            }
            M365WritebackRefusal::MissingAttributes(missing) => write!(
                f,
                "the Exchange schema lacks attributes gwb writes on Microsoft 365 groups: {}",
                missing.join(", ")
            ),
            M365WritebackRefusal::NoOrganization { label } => write!(
                f,
                "the forest has the {label} schema only, no Exchange organisation (/PrepareSchema without \
                 /PrepareAD: no organisation container under {EXCHANGE_SERVICES_RDN}); Microsoft 365 groups \
                 are written back only into a forest prepared with an Exchange organisation"
            ),
            M365WritebackRefusal::OrganizationTooOld { organization, object_version } => {
                let version = object_version.map_or_else(|| "no objectVersion".to_string(), |v| v.to_string());
                write!(
                    f,
                    "the Exchange 2013 organisation {organization} has objectVersion {version}, older than \
                     Exchange 2013 CU10 ({EXCHANGE_2013_CU10_ORGANIZATION_VERSION}); {NEEDS}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(name: &str, version: Option<u32>, servers: usize) -> FoundOrganization {
        FoundOrganization { name: name.into(), object_version: version, servers }
    }

    fn all_present() -> Vec<String> {
        Vec::new()
    }

    #[test]
    fn labels_follow_microsofts_table() {
        assert_eq!(schema_label(17003), "Exchange 2019 CU10+");
        assert_eq!(schema_label(15334), "Exchange 2016 CU21–CU23");
        assert_eq!(schema_label(15312), "Exchange 2013 CU7–CU23");
        assert_eq!(schema_label(15137), "Exchange 2013 RTM");
        assert_eq!(schema_label(14734), "Exchange 2010 SP3");
        assert_eq!(schema_label(6870), "Exchange 2003");
        assert_eq!(schema_label(17010), "Exchange schema 17010 (later than Exchange 2019 CU10+)");
        assert_eq!(schema_label(15320), "Exchange schema 15320 (later than Exchange 2016 RTM)");
        assert_eq!(schema_label(100), "Exchange schema 100 (older than Exchange 2000)");
        // The table is ascending, or the lookup above would pick the wrong entry.
        assert!(SCHEMA_VERSIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn exchange_2013_threshold() {
        let at = |v| ExchangeDetection::classify(Some(v), vec![], all_present()).is_2013_or_later();
        assert!(!at(14734));
        assert!(at(15137));
        assert!(at(17003));
        assert!(!ExchangeDetection::default().is_2013_or_later());
    }

    #[test]
    fn the_three_states_are_told_apart() {
        let none =
            ExchangeDetection::classify(None, vec![], WRITTEN_ATTRIBUTES[2..].iter().map(|s| s.to_string()).collect());
        assert!(!none.has_exchange_attributes());
        let nothing = ExchangeDetection::default();
        assert_eq!((nothing.presence(), nothing.description().as_str()), (ExchangePresence::None, "none"));
        assert_eq!(nothing.m365_group_writeback(), Err(M365WritebackRefusal::NoExchangeSchema));
        assert_eq!(none.presence(), ExchangePresence::None);
        assert_eq!(none.description(), "none");
        assert_eq!(none.m365_group_writeback(), Err(M365WritebackRefusal::NoExchangeSchema));

        let schema = ExchangeDetection::classify(Some(17003), vec![], all_present());
        assert_eq!(schema.presence(), ExchangePresence::SchemaOnly);
        assert_eq!(schema.description(), "Exchange 2019 CU10+ schema only, no organisation");
        let refusal = schema.m365_group_writeback().unwrap_err();
        assert_eq!(refusal, M365WritebackRefusal::NoOrganization { label: "Exchange 2019 CU10+".into() });
        assert!(refusal.to_string().contains("schema only, no Exchange organisation"), "{refusal}");

        let full = ExchangeDetection::classify(Some(17003), vec![org("Contoso", Some(16759), 0)], all_present());
        assert_eq!(full.presence(), ExchangePresence::Organization);
        assert_eq!(full.presence().as_str(), "org");
        assert_eq!(
            full.description(),
            "Exchange 2019 CU10+ schema, organisation Contoso (objectVersion 16759, no Exchange servers)"
        );
        // No servers: management tools only, normal in hybrid, allowed.
        assert_eq!(full.m365_group_writeback(), Ok(()));
    }

    #[test]
    fn old_schemas_are_refused_with_the_version() {
        for version in [14734, 15137, 15303, 15317] {
            let d = ExchangeDetection::classify(Some(version), vec![org("Contoso", Some(16130), 2)], all_present());
            let refusal = d.m365_group_writeback().unwrap_err();
            assert!(matches!(refusal, M365WritebackRefusal::SchemaTooOld { version: v, .. } if v == version));
            let text = refusal.to_string();
            assert!(text.contains(&schema_label(version)) && text.contains("2016 CU1"), "{text}");
        }
        for version in [15323, 15334, 17000, 17003, 17010] {
            let d = ExchangeDetection::classify(Some(version), vec![org("Contoso", None, 1)], all_present());
            assert_eq!(d.m365_group_writeback(), Ok(()), "{version}");
        }
    }

    #[test]
    fn exchange_2013_needs_the_organisation_version() {
        let with = |v| ExchangeDetection::classify(Some(15312), vec![org("Contoso", v, 1)], all_present());
        assert_eq!(with(Some(16130)).m365_group_writeback(), Ok(()));
        assert_eq!(with(Some(16133)).m365_group_writeback(), Ok(()));
        let refusal = with(Some(15965)).m365_group_writeback().unwrap_err();
        assert!(refusal.to_string().contains("objectVersion 15965"), "{refusal}");
        assert!(with(None).m365_group_writeback().is_err());
    }

    #[test]
    fn missing_attributes_refuse_and_show() {
        let d = ExchangeDetection::classify(
            Some(17003),
            vec![org("Contoso", Some(16759), 0)],
            vec!["targetAddress".into()],
        );
        assert_eq!(
            d.m365_group_writeback(),
            Err(M365WritebackRefusal::MissingAttributes(vec!["targetAddress".into()]))
        );
        assert!(d.description().ends_with("; missing attributes: targetAddress"), "{}", d.description());
    }

    #[test]
    fn attributes_without_a_schema_version_are_not_exchange() {
        // A hand-made schema with msExchRecipientTypeDetails but no version object.
        let d = ExchangeDetection::classify(None, vec![], vec!["targetAddress".into()]);
        assert_eq!(d.presence(), ExchangePresence::None);
        assert_eq!(d.m365_group_writeback(), Err(M365WritebackRefusal::NoSchemaVersion));
        assert!(d.description().starts_with("none (Exchange attributes present"), "{}", d.description());
    }

    #[test]
    fn several_organisations_are_reported() {
        let d = ExchangeDetection::classify(
            Some(17003),
            vec![org("Zeta", Some(1), 0), org("alpha", Some(16759), 3)],
            all_present(),
        );
        assert_eq!(d.organization.as_deref(), Some("alpha"));
        assert_eq!(d.organization_version, Some(16759));
        assert_eq!(d.servers, 3);
        assert_eq!(d.other_organizations, vec!["Zeta".to_string()]);
        assert!(d.description().contains("3 Exchange servers); further organisation containers: Zeta"));
    }
}
