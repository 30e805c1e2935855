//! Direct access to the lab AD DC for tests, with ldap3 alone: fixtures and checks
//! never go through the product's LDAP client, so they verify it independently.
//!
//! The lab comes from `scripts/lab-ad.sh up <name>`, whose env file sets
//! `GWB_LAB_LDAP_URL`, `GWB_LAB_LDAP_CA_FILE`, `GWB_LAB_LDAP_BIND_DN`,
//! `GWB_LAB_LDAP_PASSWORD_FILE` and `GWB_LAB_BASE_DN`.
//!
//! This file is also compiled into `gwb-ldap`'s integration tests (by `#[path]`), so
//! it only uses crates both have: ldap3, rustls, tokio, futures, uuid, anyhow.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::controls::RawControl;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry, SearchResult};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const EXTENDED_DN_OID: &str = "1.2.840.113556.1.4.529";
const TREE_DELETE_OID: &str = "1.2.840.113556.1.4.805";
/// userAccountControl: NORMAL_ACCOUNT | ACCOUNTDISABLE. A disabled account needs no
/// password, so fixtures are quick to create.
const DISABLED_USER: &str = "514";

/// A group as the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub dn: String,
    /// Lower-case hyphenated objectGUID.
    pub guid: String,
    pub sid: String,
    pub sam: String,
    pub group_type: i32,
    pub admin_description: Option<String>,
    pub description: Option<String>,
    pub display_name: Option<String>,
}

/// One member value as read with the extended-DN control.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemberEntry {
    pub guid: String,
    pub sid: Option<String>,
    pub dn: String,
}

pub struct LabAd {
    pub url: String,
    pub ca_file: PathBuf,
    pub bind_dn: String,
    password: String,
    pub base_dn: String,
    ldap: Ldap,
}

impl fmt::Debug for LabAd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabAd")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("bind_dn", &self.bind_dn)
            .field("password", &"<redacted>")
            .field("base_dn", &self.base_dn)
            .finish()
    }
}

/// A lab DC's settings (`GWB_LAB_*`): the process environment's (the plain lab
/// scripts/test.sh loads), or those of another lab's env file (`scripts/lab-ad.sh env
/// <name>`), e.g. the Exchange variants. Tests run in parallel threads of one process,
/// so another lab is passed around as a value, never put into the environment.
#[derive(Debug, Clone, Default)]
pub struct LabEnv {
    vars: HashMap<String, String>,
    /// Where the values came from, for error messages.
    source: Option<PathBuf>,
}

impl LabEnv {
    pub fn from_process_env() -> LabEnv {
        LabEnv { vars: std::env::vars().filter(|(key, _)| key.starts_with("GWB_LAB_")).collect(), source: None }
    }

    /// The `export KEY=value` lines of a lab's env file.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<LabEnv> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading lab env file {}", path.display()))?;
        let vars = text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("export "))
            .filter_map(|assignment| assignment.split_once('='))
            .map(|(key, value)| (key.to_string(), value.trim_matches('\'').trim_matches('"').to_string()))
            .collect();
        Ok(LabEnv { vars, source: Some(path.to_path_buf()) })
    }

    pub fn get(&self, name: &str) -> anyhow::Result<&str> {
        self.vars.get(name).map(String::as_str).ok_or_else(|| match &self.source {
            Some(file) => anyhow!("the lab env file {} has no {name}", file.display()),
            None => anyhow!(
                "{name} is not set: these tests need the lab AD DC. Run scripts/test.sh, or \
                 start it with `scripts/lab-ad.sh up test` and `source $(scripts/lab-ad.sh env test)`"
            ),
        })
    }

    /// `org`, `schema` or `none` (labs from before the variants are plain).
    pub fn variant(&self) -> &str {
        self.vars.get("GWB_LAB_EXCHANGE").map_or("none", String::as_str)
    }
}

impl LabAd {
    /// Connects (LDAPS, verified against the lab CA) and binds with the lab settings.
    pub async fn from_env() -> anyhow::Result<LabAd> {
        LabAd::from_lab(&LabEnv::from_process_env()).await
    }

    /// [`LabAd::from_env`] for the lab `env` describes.
    pub async fn from_lab(env: &LabEnv) -> anyhow::Result<LabAd> {
        let url = env.get("GWB_LAB_LDAP_URL")?.to_string();
        let ca_file = PathBuf::from(env.get("GWB_LAB_LDAP_CA_FILE")?);
        let bind_dn = env.get("GWB_LAB_LDAP_BIND_DN")?.to_string();
        let password_file = env.get("GWB_LAB_LDAP_PASSWORD_FILE")?.to_string();
        let base_dn = env.get("GWB_LAB_BASE_DN")?.to_string();
        let password = std::fs::read_to_string(&password_file)
            .with_context(|| format!("reading the lab password from {password_file}"))?
            .trim_end_matches(['\r', '\n'])
            .to_string();
        let ldap = connect(&url, &ca_file, &bind_dn, &password).await?;
        Ok(LabAd { url, ca_file, bind_dn, password, base_dn, ldap })
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// A new connection of its own (LDAPS, bound as the lab account), e.g. to measure
    /// what the DC does over several connections at once.
    pub async fn connection(&self) -> anyhow::Result<Ldap> {
        connect(&self.url, &self.ca_file, &self.bind_dn, &self.password).await
    }

    /// A handle for one operation; clones multiplex on the one connection.
    fn ldap(&self) -> Ldap {
        self.ldap.clone()
    }

    /// Creates `OU=<name>` under the domain root (no error if it exists) and returns its DN.
    pub async fn create_ou(&self, name: &str) -> anyhow::Result<String> {
        self.create_ou_in(&self.base_dn, name).await
    }

    /// Creates `OU=<name>,<parent>` (no error if it exists) and returns its DN.
    pub async fn create_ou_in(&self, parent: &str, name: &str) -> anyhow::Result<String> {
        let dn = format!("OU={},{parent}", escape_dn_value(name));
        let result = self.ldap().add(&dn, vec![("objectClass", set(&["organizationalUnit"]))]).await?;
        match result.rc {
            0 | 68 => Ok(dn),
            rc => bail!("creating {dn} failed: LDAP {rc} {}", result.text),
        }
    }

    /// Deletes `dn` with everything below it (tree-delete control); absent is fine.
    pub async fn delete_subtree(&self, dn: &str) -> anyhow::Result<()> {
        let mut ldap = self.ldap();
        let result = ldap
            .with_controls(RawControl { ctype: TREE_DELETE_OID.to_string(), crit: true, val: None })
            .delete(dn)
            .await?;
        match result.rc {
            0 | 32 => Ok(()),
            rc => bail!("deleting {dn} failed: LDAP {rc} {}", result.text),
        }
    }

    /// Adds any entry; values are given as text.
    pub async fn add_entry(&self, dn: &str, attrs: &[(&str, &[&str])]) -> anyhow::Result<()> {
        let attrs = attrs
            .iter()
            .map(|(name, values)| (name.to_string(), values.iter().map(|v| v.to_string()).collect()))
            .collect::<Vec<(String, std::collections::HashSet<String>)>>();
        self.ldap().add(dn, attrs).await?.success().with_context(|| format!("adding {dn}"))?;
        Ok(())
    }

    /// Replaces attribute values on any entry.
    pub async fn replace(&self, dn: &str, name: &str, values: &[&str]) -> anyhow::Result<()> {
        self.ldap()
            .modify(dn, vec![Mod::Replace(name, set(values))])
            .await?
            .success()
            .with_context(|| format!("replacing {name} on {dn}"))?;
        Ok(())
    }

    /// Creates a disabled user (no password needed); returns its DN and SID.
    pub async fn create_user(&self, ou_dn: &str, cn: &str) -> anyhow::Result<(String, String)> {
        let dn = format!("CN={},{ou_dn}", escape_dn_value(cn));
        add_user(self.ldap(), &dn, cn).await?;
        let entry = self.entry(&dn, &["objectSid"]).await?.ok_or_else(|| anyhow!("{dn} vanished after creation"))?;
        let sid = binary(&entry, "objectSid")
            .and_then(|b| sid_from_bytes(&b))
            .ok_or_else(|| anyhow!("{dn} has no objectSid"))?;
        Ok((dn, sid))
    }

    /// Creates a global security group (as AD administrators make them) with these
    /// members; returns its DN and SID.
    pub async fn create_group(&self, ou_dn: &str, cn: &str, member_dns: &[&str]) -> anyhow::Result<(String, String)> {
        let dn = format!("CN={},{ou_dn}", escape_dn_value(cn));
        let sam = [cn];
        let mut attrs: Vec<(&str, &[&str])> = vec![("objectClass", &["group"]), ("sAMAccountName", &sam)];
        if !member_dns.is_empty() {
            attrs.push(("member", member_dns));
        }
        self.add_entry(&dn, &attrs).await?;
        let entry = self.entry(&dn, &["objectSid"]).await?.ok_or_else(|| anyhow!("{dn} vanished after creation"))?;
        let sid = binary(&entry, "objectSid")
            .and_then(|b| sid_from_bytes(&b))
            .ok_or_else(|| anyhow!("{dn} has no objectSid"))?;
        Ok((dn, sid))
    }

    /// Creates `count` disabled users `<prefix>-<n>` in `ou_dn`, several adds in flight
    /// at once; returns (dn, SID) in order.
    pub async fn create_users(&self, ou_dn: &str, prefix: &str, count: usize) -> anyhow::Result<Vec<(String, String)>> {
        let names: Vec<String> = (0..count).map(|n| format!("{prefix}-{n:05}")).collect();
        futures::stream::iter(names.iter().cloned())
            .map(|cn| {
                let ldap = self.ldap();
                let dn = format!("CN={},{ou_dn}", escape_dn_value(&cn));
                async move { add_user(ldap, &dn, &cn).await }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        let filter = format!("(&(objectClass=user)(cn={}-*))", escape_filter_value(prefix));
        let mut sids = BTreeMap::new();
        for entry in self.paged_search(ou_dn, Scope::OneLevel, &filter, &["cn", "objectSid"]).await? {
            let sid = binary(&entry, "objectSid")
                .and_then(|b| sid_from_bytes(&b))
                .ok_or_else(|| anyhow!("{} has no objectSid", entry.dn))?;
            sids.insert(first(&entry, "cn").unwrap_or_default(), (entry.dn, sid));
        }
        names.iter().map(|cn| sids.remove(cn).ok_or_else(|| anyhow!("user {cn} not found after creation"))).collect()
    }

    /// One entry's attributes, `None` if it does not exist.
    pub async fn entry(&self, dn: &str, attrs: &[&str]) -> anyhow::Result<Option<SearchEntry>> {
        let SearchResult(entries, result) =
            self.ldap().search(dn, Scope::Base, "(objectClass=*)", attrs.to_vec()).await?;
        match result.rc {
            0 => Ok(entries.into_iter().filter(|e| !e.is_ref()).map(SearchEntry::construct).next()),
            32 => Ok(None),
            rc => bail!("reading {dn} failed: LDAP {rc} {}", result.text),
        }
    }

    /// Every attribute (user and operational) of one entry, binary ones hex-encoded,
    /// for before/after comparisons.
    pub async fn snapshot_entry(&self, dn: &str) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let entry = self.entry(dn, &["*", "+", "member"]).await?.ok_or_else(|| anyhow!("{dn} does not exist"))?;
        let mut out = BTreeMap::new();
        for (name, mut values) in entry.attrs {
            values.sort();
            out.insert(name.to_ascii_lowercase(), values);
        }
        for (name, values) in entry.bin_attrs {
            let mut values: Vec<String> = values.iter().map(|v| hex(v)).collect();
            values.sort();
            out.insert(name.to_ascii_lowercase(), values);
        }
        Ok(out)
    }

    /// Groups anywhere in the domain whose adminDescription is `anchor`.
    pub async fn find_groups_by_anchor(&self, anchor: &str) -> anyhow::Result<Vec<GroupEntry>> {
        let filter = format!("(&(objectClass=group)(adminDescription={}))", escape_filter_value(anchor));
        let attrs = [
            "objectGUID",
            "objectSid",
            "sAMAccountName",
            "groupType",
            "adminDescription",
            "description",
            "displayName",
        ];
        let entries = self.paged_search(&self.base_dn, Scope::Subtree, &filter, &attrs).await?;
        entries
            .into_iter()
            .map(|entry| {
                let guid = binary(&entry, "objectGUID")
                    .and_then(|b| guid_from_bytes(&b))
                    .ok_or_else(|| anyhow!("{} has no objectGUID", entry.dn))?;
                let sid = binary(&entry, "objectSid")
                    .and_then(|b| sid_from_bytes(&b))
                    .ok_or_else(|| anyhow!("{} has no objectSid", entry.dn))?;
                Ok(GroupEntry {
                    guid,
                    sid,
                    sam: first(&entry, "sAMAccountName").unwrap_or_default(),
                    group_type: first(&entry, "groupType").and_then(|v| v.parse().ok()).unwrap_or_default(),
                    admin_description: first(&entry, "adminDescription"),
                    description: first(&entry, "description"),
                    display_name: first(&entry, "displayName"),
                    dn: entry.dn,
                })
            })
            .collect()
    }

    /// Every member of a group, read in ranges with the extended-DN control. Explicit
    /// windows, because Samba answers `N-*` with every value while Windows caps it.
    pub async fn members(&self, group_dn: &str) -> anyhow::Result<Vec<MemberEntry>> {
        const WINDOW: usize = 1000;
        let mut members = Vec::new();
        let mut start = 0usize;
        loop {
            let attribute = format!("member;range={start}-{}", start + WINDOW - 1);
            let mut ldap = self.ldap();
            let (entries, _) = ldap
                .with_controls(RawControl {
                    ctype: EXTENDED_DN_OID.to_string(),
                    crit: true,
                    // SEQUENCE { INTEGER 1 }: GUID and SID as strings.
                    val: Some(vec![0x30, 0x03, 0x02, 0x01, 0x01]),
                })
                .search(group_dn, Scope::Base, "(objectClass=*)", vec![attribute.as_str()])
                .await?
                .success()
                .with_context(|| format!("reading members of {group_dn}"))?;
            let entry = entries
                .into_iter()
                .next()
                .map(SearchEntry::construct)
                .ok_or_else(|| anyhow!("{group_dn} does not exist"))?;
            let mut next = None;
            let mut values = Vec::new();
            for (name, vals) in &entry.attrs {
                let lower = name.to_ascii_lowercase();
                if let Some(range) = lower.strip_prefix("member;range=") {
                    let (_, high) = range.split_once('-').ok_or_else(|| anyhow!("odd range attribute {name}"))?;
                    if high != "*" {
                        next = Some(high.parse::<usize>()? + 1);
                    }
                    values.extend(vals.iter().cloned());
                } else if lower == "member" {
                    values.extend(vals.iter().cloned());
                }
            }
            for value in values {
                members.push(parse_extended_member(&value)?);
            }
            match next {
                Some(n) if n > start => start = n,
                Some(n) => bail!("range of {group_dn} did not advance ({start} → {n})"),
                None => break,
            }
        }
        Ok(members)
    }

    /// SIDs of all members that have one.
    pub async fn member_sids(&self, group_dn: &str) -> anyhow::Result<BTreeSet<String>> {
        Ok(self.members(group_dn).await?.into_iter().filter_map(|m| m.sid).collect())
    }

    /// `uSNChanged` of every object in the domain partition outside `excluded_subtree_dn`:
    /// take one before and one after, and equal maps prove nothing else was touched.
    ///
    /// The DC's RID bookkeeping (`CN=RID Set`, `CN=RID Manager$`) is left out: the DC
    /// updates it for every security principal created anywhere, ours included.
    pub async fn snapshot_outside(&self, excluded_subtree_dn: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let excluded = normalize_dn(excluded_subtree_dn);
        let suffix = format!(",{excluded}");
        let entries = self.paged_search(&self.base_dn, Scope::Subtree, "(objectClass=*)", &["uSNChanged"]).await?;
        Ok(entries
            .into_iter()
            .filter(|e| {
                let dn = normalize_dn(&e.dn);
                let bookkeeping = dn.starts_with("cn=rid set,") || dn.starts_with("cn=rid manager$,");
                dn != excluded && !dn.ends_with(&suffix) && !bookkeeping
            })
            .map(|e| {
                let usn = first(&e, "uSNChanged").unwrap_or_default();
                (e.dn, usn)
            })
            .collect())
    }

    /// The domain's SID (`S-1-5-21-a-b-c`).
    pub async fn domain_sid(&self) -> anyhow::Result<String> {
        let entry =
            self.entry(&self.base_dn, &["objectSid"]).await?.ok_or_else(|| anyhow!("{} not found", self.base_dn))?;
        binary(&entry, "objectSid")
            .and_then(|b| sid_from_bytes(&b))
            .ok_or_else(|| anyhow!("the domain has no objectSid"))
    }

    async fn paged_search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> anyhow::Result<Vec<SearchEntry>> {
        let adapters: Vec<Box<dyn Adapter<_, _>>> =
            vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(500))];
        let mut ldap = self.ldap();
        let mut stream = ldap.streaming_search_with(adapters, base, scope, filter, attrs.to_vec()).await?;
        let mut entries = Vec::new();
        while let Some(entry) = stream.next().await? {
            entries.push(SearchEntry::construct(entry));
        }
        stream.finish().await.success().with_context(|| format!("searching {base} for {filter}"))?;
        Ok(entries)
    }
}

/// An LDAPS connection verified against `ca_file` only, bound as `bind_dn`.
pub async fn connect(url: &str, ca_file: &std::path::Path, bind_dn: &str, password: &str) -> anyhow::Result<Ldap> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).with_context(|| format!("reading {}", ca_file.display()))? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let settings = LdapConnSettings::new().set_config(Arc::new(config));
    let (conn, mut ldap) =
        LdapConnAsync::with_settings(settings, url).await.with_context(|| format!("connecting to {url}"))?;
    ldap3::drive!(conn);
    ldap.simple_bind(bind_dn, password).await?.success().with_context(|| format!("binding to {url} as {bind_dn}"))?;
    Ok(ldap)
}

async fn add_user(mut ldap: Ldap, dn: &str, cn: &str) -> anyhow::Result<()> {
    // sAMAccountName is limited to 20 characters for users; long names get a unique
    // random one instead.
    let sam = if cn.chars().count() <= 20 {
        cn.to_string()
    } else {
        format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..19])
    };
    ldap.add(
        dn,
        vec![
            ("objectClass", set(&["user"])),
            ("sAMAccountName", set(&[sam.as_str()])),
            ("userAccountControl", set(&[DISABLED_USER])),
        ],
    )
    .await?
    .success()
    .with_context(|| format!("adding user {dn}"))?;
    Ok(())
}

fn set<'a>(values: &[&'a str]) -> std::collections::HashSet<&'a str> {
    values.iter().copied().collect()
}

pub fn first(entry: &SearchEntry, name: &str) -> Option<String> {
    entry.attrs.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).and_then(|(_, values)| values.first().cloned())
}

/// Bytes of an attribute whether ldap3 decoded it as text or kept it binary.
pub fn binary(entry: &SearchEntry, name: &str) -> Option<Vec<u8>> {
    entry
        .bin_attrs
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first().cloned())
        .or_else(|| first(entry, name).map(String::into_bytes))
}

pub fn guid_from_bytes(b: &[u8]) -> Option<String> {
    let b: &[u8; 16] = b.try_into().ok()?;
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        hex(&b[10..])
    ))
}

pub fn sid_from_bytes(b: &[u8]) -> Option<String> {
    let count = usize::from(*b.get(1)?);
    if b.len() != 8 + 4 * count {
        return None;
    }
    let authority = b[2..8].iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
    let mut sid = format!("S-{}-{authority}", b[0]);
    for chunk in b[8..].chunks_exact(4) {
        sid.push_str(&format!("-{}", u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])));
    }
    Some(sid)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_extended_member(value: &str) -> anyhow::Result<MemberEntry> {
    let mut guid = None;
    let mut sid = None;
    let mut rest = value;
    while let Some(tail) = rest.strip_prefix('<') {
        let (component, after) = tail.split_once('>').ok_or_else(|| anyhow!("bad extended DN {value}"))?;
        if let Some(g) = component.strip_prefix("GUID=") {
            guid = Some(g.to_ascii_lowercase());
        } else if let Some(s) = component.strip_prefix("SID=") {
            sid = Some(s.to_string());
        }
        rest = after.strip_prefix(';').unwrap_or(after);
    }
    Ok(MemberEntry { guid: guid.ok_or_else(|| anyhow!("no GUID in {value}"))?, sid, dn: rest.to_string() })
}

/// Enough RFC 4514 escaping for fixture names.
pub fn escape_dn_value(value: &str) -> String {
    let mut out = String::new();
    for (i, ch) in value.chars().enumerate() {
        match ch {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(ch);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(ch);
            }
            _ => out.push(ch),
        }
    }
    if out.ends_with(' ') {
        out.pop();
        out.push_str("\\ ");
    }
    out
}

pub fn escape_filter_value(value: &str) -> String {
    value
        .chars()
        .map(|ch| match ch {
            '*' | '(' | ')' | '\\' | '\0' => format!("\\{:02x}", ch as u32),
            c => c.to_string(),
        })
        .collect()
}

/// Lower-cased, without spaces after separators: good enough to compare the DNs AD
/// itself returns.
fn normalize_dn(dn: &str) -> String {
    dn.split(',').map(|part| part.trim().to_lowercase()).collect::<Vec<_>>().join(",")
}
