//! Exchange detection against real Samba labs of each variant:
//!
//! * `GWB_LAB_EXCHANGE_ORG_ENV`: env file of a lab made with
//!   `scripts/lab-ad.sh up exchange --exchange` (schema and organisation);
//! * `GWB_LAB_EXCHANGE_SCHEMA_ENV`: env file of a lab made with
//!   `scripts/lab-ad.sh up exchange-schema --exchange-schema-only`;
//! * the usual `GWB_LAB_*` variables: the plain lab (`scripts/lab-ad.sh up test`).
//!
//! `scripts/lab-ad.sh up` prints the env file's path, so
//! `export GWB_LAB_EXCHANGE_ORG_ENV=$(scripts/lab-ad.sh up exchange --exchange)` is all
//! a run needs. A test whose lab is not given is skipped with a message, or fails when
//! `GWB_REQUIRE_EXCHANGE_LAB=1` (as `scripts/test.sh` sets it).
//!
//! What the lab says it was provisioned with (its env file) is checked three ways:
//! against gwb-ldap's detection, against the directory read here with ldap3 alone, and
//! by writing a mail-enabled group through gwb-ldap (allowed or refused).

// The lab helpers of the end-to-end test crate, shared rather than copied; not every
// helper is needed here.
#[allow(dead_code)]
#[path = "../../../tests/src/ad.rs"]
mod ad;

use std::collections::HashMap;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail, ensure};
use gwb_core::command::{FailureClass, GroupSpec, GroupType, MailAttributes, WriteCommand};
use gwb_ldap::exchange::{SCHEMA_VERSION_CN, WRITTEN_ATTRIBUTES, schema_label};
use gwb_ldap::{Directory, DirectoryConfig, ExchangeDetection, ExchangePresence, M365WritebackRefusal};
use ldap3::{Ldap, Scope, SearchEntry};

const ORG_LAB: &str = "GWB_LAB_EXCHANGE_ORG_ENV";
const SCHEMA_LAB: &str = "GWB_LAB_EXCHANGE_SCHEMA_ENV";
const REQUIRE: &str = "GWB_REQUIRE_EXCHANGE_LAB";

/// A lab's settings, as its env file (or the process environment) gives them.
#[derive(Debug)]
struct Lab {
    vars: HashMap<String, String>,
}

impl Lab {
    fn from_file(path: &Path) -> anyhow::Result<Lab> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading lab env file {}", path.display()))?;
        let vars = text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("export "))
            .filter_map(|assignment| assignment.split_once('='))
            .map(|(key, value)| (key.to_string(), value.trim_matches('\'').trim_matches('"').to_string()))
            .collect();
        Ok(Lab { vars })
    }

    fn from_process_env() -> Lab {
        Lab { vars: std::env::vars().filter(|(key, _)| key.starts_with("GWB_LAB_")).collect() }
    }

    fn get(&self, key: &str) -> anyhow::Result<&str> {
        self.vars.get(key).map(String::as_str).ok_or_else(|| anyhow!("the lab's env has no {key}"))
    }

    fn number(&self, key: &str) -> anyhow::Result<u32> {
        self.get(key)?.parse().with_context(|| format!("{key} is not a number"))
    }

    /// org, schema or none; labs from before the variants existed are plain.
    fn variant(&self) -> &str {
        self.vars.get("GWB_LAB_EXCHANGE").map_or("none", String::as_str)
    }

    fn password(&self) -> anyhow::Result<String> {
        let file = self.get("GWB_LAB_LDAP_PASSWORD_FILE")?;
        Ok(std::fs::read_to_string(file)
            .with_context(|| format!("reading {file}"))?
            .trim_end_matches(['\r', '\n'])
            .to_string())
    }

    fn config(&self, managed_ou: &str) -> anyhow::Result<DirectoryConfig> {
        Ok(DirectoryConfig::new(
            self.get("GWB_LAB_LDAP_URL")?,
            PathBuf::from(self.get("GWB_LAB_LDAP_CA_FILE")?),
            self.get("GWB_LAB_LDAP_BIND_DN")?,
            self.password()?,
            vec![managed_ou.to_string()],
        ))
    }

    /// A plain ldap3 connection (LDAPS verified against the lab CA), independent of
    /// gwb-ldap, to check what the directory really holds.
    async fn raw(&self) -> anyhow::Result<Ldap> {
        let ca_file = Path::new(self.get("GWB_LAB_LDAP_CA_FILE")?);
        ad::connect(self.get("GWB_LAB_LDAP_URL")?, ca_file, self.get("GWB_LAB_LDAP_BIND_DN")?, &self.password()?).await
    }
}

/// The lab named by `var`, or `None` (after saying so) when the test is to be skipped.
fn lab_from(var: &str, how: &str) -> anyhow::Result<Option<Lab>> {
    match std::env::var_os(var) {
        Some(path) => Ok(Some(Lab::from_file(Path::new(&path))?)),
        None if std::env::var(REQUIRE).as_deref() == Ok("1") => bail!(
            "{REQUIRE}=1 but {var} is not set: this test needs the lab made by `{how}`; run \
             `export {var}=$({how})` (lab-ad.sh prints the env file's path), or scripts/test.sh"
        ),
        None => {
            eprintln!("skipped: {var} is not set (export {var}=$({how}) to run it; {REQUIRE}=1 makes this a failure)");
            Ok(None)
        }
    }
}

fn first(entry: &SearchEntry, name: &str) -> Option<String> {
    entry.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.first().cloned())
}

async fn search(
    ldap: &mut Ldap,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: &[&str],
) -> anyhow::Result<Vec<SearchEntry>> {
    match ldap.search(base, scope, filter, attrs.to_vec()).await?.success() {
        Ok((entries, _)) => Ok(entries.into_iter().map(SearchEntry::construct).collect()),
        Err(ldap3::LdapError::LdapResult { result }) if result.rc == 32 => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("searching {base} for {filter}")),
    }
}

/// The directory's own answer, read without gwb-ldap: (rangeUpper of
/// ms-Exch-Schema-Version-Pt, organisations with their objectVersion, attributes gwb
/// writes that the schema lacks).
async fn read_raw(lab: &Lab) -> anyhow::Result<(Option<u32>, Vec<(String, Option<u32>)>, Vec<String>)> {
    let mut ldap = lab.raw().await?;
    let base = lab.get("GWB_LAB_BASE_DN")?;
    let schema = format!("CN=Schema,CN=Configuration,{base}");
    let version = search(
        &mut ldap,
        &format!("CN={SCHEMA_VERSION_CN},{schema}"),
        Scope::Base,
        "(objectClass=attributeSchema)",
        &["rangeUpper"],
    )
    .await?
    .first()
    .map(|e| first(e, "rangeUpper").context("no rangeUpper")?.parse::<u32>().context("rangeUpper"))
    .transpose()?;
    let orgs = search(
        &mut ldap,
        &format!("CN=Microsoft Exchange,CN=Services,CN=Configuration,{base}"),
        Scope::OneLevel,
        "(objectClass=msExchOrganizationContainer)",
        &["cn", "objectVersion"],
    )
    .await?
    .iter()
    .map(|e| (first(e, "cn").unwrap_or_default(), first(e, "objectVersion").and_then(|v| v.parse().ok())))
    .collect();
    let mut missing = Vec::new();
    for name in WRITTEN_ATTRIBUTES {
        if search(&mut ldap, &schema, Scope::OneLevel, &format!("(lDAPDisplayName={name})"), &["1.1"]).await?.is_empty()
        {
            missing.push(name.to_string());
        }
    }
    ldap.unbind().await.ok();
    Ok((version, orgs, missing))
}

/// Connects gwb-ldap to the lab, with an OU of this test's own as managed OU, and
/// returns the directory, its detection and the OU (to remove afterwards).
async fn detect(lab: &Lab, label: &str) -> anyhow::Result<(Directory, ExchangeDetection, String)> {
    let base = lab.get("GWB_LAB_BASE_DN")?;
    let ou = format!("OU=gwb-exchange-{label}-{},{base}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut ldap = lab.raw().await?;
    ldap.add(&ou, vec![("objectClass", ["organizationalUnit"].into())]).await?.success().with_context(|| ou.clone())?;
    let dir = Directory::connect(lab.config(&ou)?).await?;
    let detection = dir.capabilities().exchange.clone();
    eprintln!("{label} lab ({}): {}", lab.variant(), detection.description());
    eprintln!("{label} lab: {detection:?}");
    eprintln!(
        "{label} lab: Microsoft 365 group writeback: {:?}",
        detection.m365_group_writeback().map_err(|r| r.to_string())
    );
    Ok((dir, detection, ou))
}

async fn remove_ou(lab: &Lab, ou: &str) -> anyhow::Result<()> {
    let mut ldap = lab.raw().await?;
    for entry in search(&mut ldap, ou, Scope::OneLevel, "(objectClass=*)", &["1.1"]).await? {
        ldap.delete(&entry.dn).await?.success()?;
    }
    ldap.delete(ou).await?.success()?;
    Ok(())
}

/// A Microsoft 365 group as the planner sends it today: universal distribution with
/// mail attributes.
fn m365_group(ou: &str) -> GroupSpec {
    let object_id = uuid::Uuid::new_v4().to_string();
    let alias = format!("team-{}", &object_id[..8]);
    GroupSpec {
        anchor: format!("Group_{object_id}"),
        object_id,
        cn: alias.clone(),
        parent_dn: ou.to_string(),
        sam_account_name_candidates: vec![alias.clone()],
        group_type: GroupType::UniversalDistribution,
        display_name: format!("{alias} display"),
        description: None,
        mail: Some(MailAttributes {
            mail: Some(format!("{alias}@lab.example")),
            mail_nickname: Some(alias.clone()),
            proxy_addresses: vec![
                format!("SMTP:{alias}@lab.example"),
                format!("smtp:{alias}@lab.mail.onmicrosoft.com"),
            ],
        }),
        on_premises_sid: None,
    }
}

/// Detection agrees with what the directory holds, read independently.
async fn agrees_with_directory(lab: &Lab, detection: &ExchangeDetection) -> anyhow::Result<()> {
    let (version, orgs, missing) = read_raw(lab).await?;
    ensure!(detection.schema_version == version, "schema version: detected {detection:?}, directory {version:?}");
    ensure!(
        detection.organization == orgs.first().map(|(name, _)| name.clone()),
        "organisation: detected {detection:?}, directory {orgs:?}"
    );
    ensure!(detection.organization_version == orgs.first().and_then(|(_, v)| *v), "{detection:?} vs {orgs:?}");
    ensure!(
        detection.missing_attributes == missing,
        "missing attributes: detected {detection:?}, directory {missing:?}"
    );
    Ok(())
}

#[tokio::test]
async fn exchange_lab_with_an_organisation_allows_m365_groups() -> anyhow::Result<()> {
    let Some(lab) = lab_from(ORG_LAB, "scripts/lab-ad.sh up exchange --exchange")? else { return Ok(()) };
    ensure!(lab.variant() == "org", "{ORG_LAB} must name a lab made with --exchange, not '{}'", lab.variant());
    let version = lab.number("GWB_LAB_EXCHANGE_SCHEMA_VERSION")?;
    let organization = lab.get("GWB_LAB_EXCHANGE_ORGANIZATION")?.to_string();
    let organization_version = lab.number("GWB_LAB_EXCHANGE_ORGANIZATION_VERSION")?;

    let (mut dir, detection, ou) = detect(&lab, "org").await?;
    agrees_with_directory(&lab, &detection).await?;
    ensure!(detection.schema_version == Some(version), "{detection:?}");
    ensure!(detection.schema_label == schema_label(version), "{detection:?}");
    ensure!(detection.is_2013_or_later(), "{detection:?}");
    ensure!(detection.organization.as_deref() == Some(organization.as_str()), "{detection:?}");
    ensure!(detection.organization_version == Some(organization_version), "{detection:?}");
    ensure!(detection.servers == 0 && detection.other_organizations.is_empty(), "{detection:?}");
    ensure!(detection.missing_attributes.is_empty(), "{detection:?}");
    ensure!(detection.presence() == ExchangePresence::Organization, "{detection:?}");
    let expected = format!(
        "{} schema, organisation {organization} (objectVersion {organization_version}, no Exchange servers)",
        schema_label(version)
    );
    ensure!(detection.description() == expected, "{:?} != {expected:?}", detection.description());
    // The lab's defaults are an Exchange 2019 CU10+ forest with no servers: allowed.
    ensure!(detection.m365_group_writeback().is_ok() == (version >= 15323), "{detection:?}");
    ensure!(dir.capabilities().has_exchange_schema, "{:?}", dir.capabilities());
    ensure!(dir.capabilities().configuration_naming_context.starts_with("CN=Configuration,"));

    if detection.m365_group_writeback().is_ok() {
        // A Microsoft 365 group is written as Exchange's RemoteGroupMailbox: universal
        // distribution, mailNickname, the RemoteGroupMailbox type and a targetAddress
        // routing on-premises mail to its Exchange Online address.
        let mut spec = m365_group(&ou);
        let alias = spec.mail.as_ref().and_then(|m| m.mail_nickname.clone()).context("alias")?;
        // An address another on-premises recipient already holds is not written twice.
        let holder = format!("CN=holder-{alias},{ou}");
        let shared = format!("smtp:shared-{alias}@lab.example");
        let mut ldap = lab.raw().await?;
        ldap.add(
            &holder,
            vec![
                ("objectClass", HashSet::from(["group"])),
                ("sAMAccountName", HashSet::from([format!("h-{}", &alias[5..]).as_str()])),
                // The holder has it as its primary, in other case: still the same address.
                ("proxyAddresses", HashSet::from([shared.to_uppercase().as_str()])),
            ],
        )
        .await?
        .success()?;
        if let Some(mail) = spec.mail.as_mut() {
            mail.proxy_addresses.push(shared.clone());
        }
        let report = dir.apply(&WriteCommand::Upsert(spec.clone())).await?;
        ensure!(report.group.is_some(), "{report:?}");
        let found = search(
            &mut ldap,
            &ou,
            Scope::OneLevel,
            &format!("(adminDescription={})", spec.anchor),
            &[
                "mailNickname",
                "msExchRecipientTypeDetails",
                "msExchRecipientDisplayType",
                "groupType",
                "targetAddress",
                "proxyAddresses",
            ],
        )
        .await?;
        let entry = found.first().context("the group was not written")?;
        ensure!(first(entry, "mailNickname") == Some(alias.clone()), "{entry:?}");
        ensure!(first(entry, "msExchRecipientTypeDetails").as_deref() == Some("8796093022208"), "{entry:?}");
        ensure!(first(entry, "msExchRecipientDisplayType").as_deref() == Some("1"), "{entry:?}");
        ensure!(first(entry, "groupType").as_deref() == Some("8"), "{entry:?}");
        ensure!(first(entry, "targetAddress") == Some(format!("SMTP:{alias}@lab.mail.onmicrosoft.com")), "{entry:?}");
        let proxies: HashSet<String> = entry
            .attrs
            .get("proxyAddresses")
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.to_lowercase())
            .collect();
        ensure!(proxies.contains(&format!("smtp:{alias}@lab.example")), "{entry:?}");
        ensure!(!proxies.contains(&shared), "an address another recipient holds was written: {entry:?}");
    } else if let Err(refusal) = detection.m365_group_writeback() {
        // An older organisation or schema (GWB_LAB_EXCHANGE_*_VERSION): refused, saying why.
        match dir.apply(&WriteCommand::Upsert(m365_group(&ou))).await {
            Ok(report) => bail!("written despite {refusal}: {report:?}"),
            Err(e) => ensure!(e.message.contains(&refusal.to_string()), "{} lacks {refusal}", e.message),
        }
    }
    drop(dir);
    remove_ou(&lab, &ou).await
}

#[tokio::test]
async fn schema_only_lab_refuses_m365_groups() -> anyhow::Result<()> {
    let Some(lab) = lab_from(SCHEMA_LAB, "scripts/lab-ad.sh up exchange-schema --exchange-schema-only")? else {
        return Ok(());
    };
    ensure!(
        lab.variant() == "schema",
        "{SCHEMA_LAB} must name a lab made with --exchange-schema-only, not '{}'",
        lab.variant()
    );
    let version = lab.number("GWB_LAB_EXCHANGE_SCHEMA_VERSION")?;

    let (mut dir, detection, ou) = detect(&lab, "schema").await?;
    agrees_with_directory(&lab, &detection).await?;
    ensure!(detection.schema_version == Some(version), "{detection:?}");
    ensure!(detection.organization.is_none() && detection.organization_version.is_none(), "{detection:?}");
    ensure!(detection.missing_attributes.is_empty(), "{detection:?}");
    ensure!(detection.presence() == ExchangePresence::SchemaOnly, "{detection:?}");
    ensure!(
        detection.description() == format!("{} schema only, no organisation", schema_label(version)),
        "{}",
        detection.description()
    );
    let refusal = detection.m365_group_writeback().err().context("a schema-only forest must be refused")?;
    if version >= 15323 {
        ensure!(matches!(refusal, M365WritebackRefusal::NoOrganization { .. }), "{refusal:?}");
    }
    // The old check still sees the attributes (current callers keep working) ...
    ensure!(dir.capabilities().has_exchange_schema, "{:?}", dir.capabilities());
    // ... but the writer refuses the group, with the reason.
    let result = dir.apply(&WriteCommand::Upsert(m365_group(&ou))).await;
    match result {
        Ok(report) => bail!("a Microsoft 365 group was written into a schema-only forest: {report:?}"),
        Err(e) => {
            ensure!(e.class == FailureClass::Permanent, "{e:?}");
            ensure!(e.message.contains(&refusal.to_string()), "{} lacks {refusal}", e.message);
        }
    }
    drop(dir);
    remove_ou(&lab, &ou).await
}

#[tokio::test]
async fn plain_lab_has_no_exchange() -> anyhow::Result<()> {
    if std::env::var_os("GWB_LAB_LDAP_URL").is_none() {
        if std::env::var(REQUIRE).as_deref() == Ok("1") {
            bail!("{REQUIRE}=1 but GWB_LAB_LDAP_URL is not set: source $(scripts/lab-ad.sh env test) first");
        }
        eprintln!("skipped: GWB_LAB_LDAP_URL is not set (source $(scripts/lab-ad.sh env test))");
        return Ok(());
    }
    let lab = Lab::from_process_env();
    if lab.variant() != "none" {
        eprintln!("skipped: the GWB_LAB_* lab is the '{}' Exchange variant, not the plain one", lab.variant());
        return Ok(());
    }
    let (dir, detection, ou) = detect(&lab, "plain").await?;
    agrees_with_directory(&lab, &detection).await?;
    ensure!(detection.presence() == ExchangePresence::None, "{detection:?}");
    ensure!(detection.schema_version.is_none() && detection.organization.is_none(), "{detection:?}");
    ensure!(detection.description() == "none", "{}", detection.description());
    ensure!(detection.m365_group_writeback() == Err(M365WritebackRefusal::NoExchangeSchema), "{detection:?}");
    // Base AD has mail and proxyAddresses; everything Exchange adds is missing.
    ensure!(detection.missing_attributes == WRITTEN_ATTRIBUTES[2..].to_vec(), "{detection:?}");
    ensure!(!dir.capabilities().has_exchange_schema);
    drop(dir);
    remove_ou(&lab, &ou).await
}
