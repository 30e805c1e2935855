//! Connection handling, discovery, the timed LDAP primitives and anchor lookup.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use gwb_core::command::{AppliedGroup, ApplyReport, WriteCommand};
use gwb_core::escape::filter_value;
use ldap3::controls::RawControl;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapResult, Mod, Scope, SearchEntry, SearchResult};
use rustls::ClientConfig;
use tokio::task::JoinHandle;
use tokio::time::{error::Elapsed, timeout};

use crate::codec::{is_at_or_below, is_below, is_privileged_sid};
use crate::config::DirectoryConfig;
use crate::error::{DirectoryError, NO_SUCH_OBJECT};
use crate::exchange::{self, ExchangeDetection, FoundOrganization};
use crate::group::{self, GroupEntry};
use crate::members::MemberOp;
use crate::observe::{OperationKind, OperationObserver, OperationOutcome, OperationRecord};
use crate::tls;

/// Permissive modify: AD then accepts adding a present value / deleting an absent one.
pub(crate) const PERMISSIVE_MODIFY_OID: &str = "1.2.840.113556.1.4.1413";
/// Entries per page of [`Directory::paged_search`].
const PAGE_SIZE: usize = 500;
/// Extended DN: DN values come back as `<GUID=…>;<SID=…>;CN=…`.
pub(crate) const EXTENDED_DN_OID: &str = "1.2.840.113556.1.4.529";

/// What the directory offers, learnt at connect time (and on `rediscover`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub default_naming_context: String,
    pub schema_naming_context: String,
    pub configuration_naming_context: String,
    pub dns_host_name: String,
    /// The schema has `msDS-ExternalDirectoryObjectId` (Windows Server 2016 schema and
    /// later), so the anchor is written there too.
    pub has_external_directory_object_id: bool,
    /// The schema has Exchange's recipient attributes (`msExchRecipientTypeDetails`);
    /// without them distribution and mail-enabled groups are refused. Whether
    /// Microsoft 365 groups may be written is [`ExchangeDetection::m365_group_writeback`]
    /// on `exchange`.
    pub has_exchange_schema: bool,
    /// Exchange as Exchange detects it: schema version, organisation, attributes.
    pub exchange: ExchangeDetection,
    /// rootDSE lists the permissive-modify control.
    pub supports_permissive_modify: bool,
    /// rootDSE lists the extended-DN control.
    pub supports_extended_dn: bool,
    /// Configured managed OUs that do not exist (writes under them fail).
    pub missing_ous: Vec<String>,
    /// Managed OUs that exist but where the bind account may not create groups
    /// (`allowedChildClassesEffective` lacks `group`).
    pub unwritable_ous: Vec<String>,
}

/// A member of a group as AD reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdMember {
    pub dn: String,
    /// Lower-case hyphenated objectGUID.
    pub guid: String,
    /// `S-1-5-…`; absent for objects without a SID (contacts).
    pub sid: Option<String>,
}

struct Session {
    ldap: Ldap,
    driver: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // The driver owns the socket; stopping it closes the connection at once
        // instead of waiting for every handle clone to go.
        self.driver.abort();
    }
}

/// The writer's connection to AD. One LDAP connection, re-established on demand.
pub struct Directory {
    pub(crate) config: DirectoryConfig,
    tls: Arc<ClientConfig>,
    pub(crate) caps: Capabilities,
    session: Option<Session>,
    observer: Option<OperationObserver>,
    /// objectGUID of each group this process found or created, by lower-cased anchor:
    /// later writes read it by GUID (a base read) instead of searching for the
    /// anchor, and re-check every safety condition on what they read.
    remembered: HashMap<String, String>,
    /// Anchors no object carried at the last `look_up_anchors` (lower-cased); each is
    /// used once, by the first lookup of that anchor, and all are dropped at the next
    /// `look_up_anchors`.
    absent: HashSet<String>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("config", &self.config)
            .field("caps", &self.caps)
            .field("connected", &self.session.is_some())
            .field("observed", &self.observer.is_some())
            .finish()
    }
}

impl Directory {
    /// Connects over TLS (verified against `ca_file` only), binds, and discovers the
    /// directory's capabilities.
    pub async fn connect(config: DirectoryConfig) -> Result<Directory, DirectoryError> {
        config.validate()?;
        let tls = tls::client_config(&config.ca_file)?;
        let mut directory = Directory {
            config,
            tls,
            caps: Capabilities::default(),
            session: None,
            observer: None,
            remembered: HashMap::new(),
            absent: HashSet::new(),
        };
        directory.caps = directory.discover().await?;
        Ok(directory)
    }

    /// Reports every LDAP operation from now on (for metrics).
    pub fn set_observer(&mut self, observer: OperationObserver) {
        self.observer = Some(observer);
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Reads rootDSE and the schema again (after a schema extension, say).
    pub async fn rediscover(&mut self) -> Result<&Capabilities, DirectoryError> {
        self.caps = self.discover().await?;
        Ok(&self.caps)
    }

    /// A rootDSE read: proves the connection (re-established if needed) and the bind.
    pub async fn check_health(&mut self) -> Result<(), DirectoryError> {
        self.search("", Scope::Base, "(objectClass=*)", &["dnsHostName"], Vec::new()).await.map(drop)
    }

    /// Applies one command. Every command is idempotent: applying it again after
    /// success (or after a failure half-way) converges to the same state.
    pub async fn apply(&mut self, command: &WriteCommand) -> Result<ApplyReport, DirectoryError> {
        match command {
            WriteCommand::Upsert(spec) => self.upsert(spec).await,
            WriteCommand::AddMembers { anchor, members } => self.change_members(anchor, members, MemberOp::Add).await,
            WriteCommand::RemoveMembers { anchor, members } => {
                self.change_members(anchor, members, MemberOp::Remove).await
            }
            WriteCommand::Delete { anchor } => self.delete_group(anchor).await,
            WriteCommand::Retire { anchor, retired_ou } => self.retire(anchor, retired_ou).await,
            WriteCommand::Reanimate { anchor, object_guid, dn } => self.reanimate(anchor, object_guid, dn).await,
        }
    }

    /// The group carrying `anchor` in the managed OUs, if any. Read-only, so no safety
    /// refusal applies; more than one match is still an error.
    pub async fn find_group(&mut self, anchor: &str) -> Result<Option<AppliedGroup>, DirectoryError> {
        Ok(self.find_in_managed(anchor).await?.map(|g| g.applied()))
    }

    /// Every member of the group carrying `anchor` (ranged retrieval, any size).
    pub async fn read_members(&mut self, anchor: &str) -> Result<Vec<AdMember>, DirectoryError> {
        let group = self
            .find_in_managed(anchor)
            .await?
            .ok_or_else(|| DirectoryError::permanent(format!("no group carries anchor {anchor} in the managed OUs")))?;
        self.read_members_of(&group.dn).await
    }

    async fn discover(&mut self) -> Result<Capabilities, DirectoryError> {
        let root = self
            .search(
                "",
                Scope::Base,
                "(objectClass=*)",
                &[
                    "defaultNamingContext",
                    "schemaNamingContext",
                    "configurationNamingContext",
                    "dnsHostName",
                    "supportedControl",
                ],
                Vec::new(),
            )
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| DirectoryError::permanent("the server returned no rootDSE"))?;
        let default_naming_context = first_value(&root, "defaultNamingContext").ok_or_else(|| {
            DirectoryError::permanent("rootDSE has no defaultNamingContext: the server is not an AD domain controller")
        })?;
        let schema_naming_context = first_value(&root, "schemaNamingContext")
            .ok_or_else(|| DirectoryError::permanent("rootDSE has no schemaNamingContext"))?;
        // Samba and AD both publish it; derived from the schema NC's parent otherwise.
        let configuration_naming_context = first_value(&root, "configurationNamingContext").unwrap_or_else(|| {
            schema_naming_context.split_once(',').map(|(_, parent)| parent.to_string()).unwrap_or_default()
        });
        let controls: HashSet<String> = values(&root, "supportedControl").into_iter().collect();

        // One search of the schema NC answers every schema question: the attributes
        // used, and Exchange's schema version object (found by name, as Exchange does).
        let schema_filter = format!(
            "(|(cn={}){})",
            exchange::SCHEMA_VERSION_CN,
            [group::EXTERNAL_ID, group::RECIPIENT_TYPE_DETAILS]
                .iter()
                .chain(exchange::WRITTEN_ATTRIBUTES.iter())
                .map(|name| format!("(lDAPDisplayName={name})"))
                .collect::<String>()
        );
        let schema_entries = self
            .search(
                &schema_naming_context,
                Scope::OneLevel,
                &schema_filter,
                &["cn", "lDAPDisplayName", "rangeUpper", "objectClass"],
                Vec::new(),
            )
            .await?;
        let found: HashSet<String> = schema_entries
            .iter()
            .filter_map(|e| first_value(e, "lDAPDisplayName"))
            .map(|name| name.to_ascii_lowercase())
            .collect();
        let exchange = self.detect_exchange(&schema_entries, &found, &configuration_naming_context).await?;

        let mut missing_ous = Vec::new();
        let mut unwritable_ous = Vec::new();
        for ou in self.config.managed_ous.clone() {
            if !self.exists(&ou).await? {
                tracing::warn!(ou = %ou, "managed OU does not exist");
                missing_ous.push(ou);
            } else if !self.may_create_groups_in(&ou).await? {
                tracing::warn!(ou = %ou, "the bind account may not create groups in this managed OU");
                unwritable_ous.push(ou);
            }
        }
        Ok(Capabilities {
            default_naming_context,
            schema_naming_context,
            configuration_naming_context,
            dns_host_name: first_value(&root, "dnsHostName").unwrap_or_default(),
            has_external_directory_object_id: found.contains(&group::EXTERNAL_ID.to_ascii_lowercase()),
            has_exchange_schema: found.contains(&group::RECIPIENT_TYPE_DETAILS.to_ascii_lowercase()),
            exchange,
            supports_permissive_modify: controls.contains(PERMISSIVE_MODIFY_OID),
            supports_extended_dn: controls.contains(EXTENDED_DN_OID),
            missing_ous,
            unwritable_ous,
        })
    }

    /// Exchange as Exchange itself detects it (see [`crate::exchange`]), from the
    /// schema entries `discover` read and the configuration NC.
    async fn detect_exchange(
        &mut self,
        schema_entries: &[SearchEntry],
        found_attributes: &HashSet<String>,
        configuration_naming_context: &str,
    ) -> Result<ExchangeDetection, DirectoryError> {
        let version_entry = schema_entries.iter().find(|e| {
            first_value(e, "cn").is_some_and(|cn| cn.eq_ignore_ascii_case(exchange::SCHEMA_VERSION_CN))
                && values(e, "objectClass").iter().any(|c| c.eq_ignore_ascii_case("attributeSchema"))
        });
        let schema_version = match version_entry {
            None => None,
            Some(entry) => {
                Some(first_value(entry, "rangeUpper").and_then(|v| v.trim().parse::<u32>().ok()).ok_or_else(|| {
                    DirectoryError::permanent(format!(
                        "{} has no readable rangeUpper: cannot tell the Exchange schema version",
                        entry.dn
                    ))
                })?)
            }
        };
        let missing_attributes: Vec<String> = exchange::WRITTEN_ATTRIBUTES
            .iter()
            .filter(|name| !found_attributes.contains(&name.to_ascii_lowercase()))
            .map(|name| name.to_string())
            .collect();

        let mut organizations = Vec::new();
        if !configuration_naming_context.is_empty() {
            let services = format!("{},{configuration_naming_context}", exchange::EXCHANGE_SERVICES_RDN);
            let filter = format!("(objectClass={})", exchange::ORGANIZATION_CLASS);
            let entries =
                match self.search(&services, Scope::OneLevel, &filter, &["cn", "objectVersion"], Vec::new()).await {
                    Err(e) if e.code == Some(NO_SUCH_OBJECT) => Vec::new(),
                    other => other?,
                };
            for entry in entries {
                let servers = self
                    .search(
                        &entry.dn,
                        Scope::Subtree,
                        &format!("(objectClass={})", exchange::SERVER_CLASS),
                        &["1.1"],
                        Vec::new(),
                    )
                    .await?
                    .len();
                organizations.push(FoundOrganization {
                    name: first_value(&entry, "cn").unwrap_or_else(|| entry.dn.clone()),
                    object_version: first_value(&entry, "objectVersion").and_then(|v| v.trim().parse().ok()),
                    servers,
                });
            }
        }
        let detection = ExchangeDetection::classify(schema_version, organizations, missing_attributes);
        tracing::info!(exchange = %detection.description(), "Exchange detection");
        Ok(detection)
    }

    // ---- anchor lookup and safety -------------------------------------------------

    pub(crate) async fn find_in_managed(&mut self, anchor: &str) -> Result<Option<GroupEntry>, DirectoryError> {
        if anchor.trim().is_empty() {
            return Err(DirectoryError::permanent("empty anchor"));
        }
        let filter = anchor_filter(anchor);
        let attrs = group::attributes_to_read(&self.caps);
        let mut found: Vec<GroupEntry> = Vec::new();
        for ou in self.config.managed_ous.clone() {
            let entries = match self.search(&ou, Scope::Subtree, &filter, &attrs, Vec::new()).await {
                Err(e) if e.code == Some(NO_SUCH_OBJECT) => continue,
                other => other?,
            };
            for entry in entries {
                let group = GroupEntry::from_search(entry)?;
                // Nested managed OUs return the same object twice.
                if !found.iter().any(|f| f.guid == group.guid) {
                    found.push(group);
                }
            }
        }
        if found.len() > 1 {
            return Err(several_carriers(anchor, &found));
        }
        Ok(found.pop())
    }

    /// The group a write command may act on: found by anchor in the managed OUs and
    /// passing every safety check. `None` when no object in the domain carries the
    /// anchor; an error when one does but lies outside the managed OUs.
    ///
    /// A group this process found or created before is read by its objectGUID and
    /// must still carry the anchor, lie in a managed OU and pass every other check;
    /// otherwise it is forgotten and the anchor is searched for again.
    pub(crate) async fn locate_for_write(&mut self, anchor: &str) -> Result<Option<GroupEntry>, DirectoryError> {
        if anchor.trim().is_empty() {
            return Err(DirectoryError::permanent("empty anchor"));
        }
        let key = anchor_key(anchor);
        if let Some(guid) = self.remembered.get(&key).cloned() {
            match self.read_group_by_guid(&guid).await? {
                Some(group) if self.check_safe(&group, anchor).is_ok() => return Ok(Some(group)),
                _ => {
                    self.remembered.remove(&key);
                }
            }
        }
        if self.absent.remove(&key) {
            return Ok(None);
        }
        // One search of the whole domain answers both questions: is it in a managed
        // OU, and does anything outside them carry the anchor?
        let base = self.caps.default_naming_context.clone();
        let attrs = group::attributes_to_read(&self.caps);
        let entries = self.search(&base, Scope::Subtree, &anchor_filter(anchor), &attrs, Vec::new()).await?;
        let mut managed = Vec::new();
        let mut elsewhere = None;
        for entry in entries {
            if self.in_managed_ous(&entry.dn) {
                managed.push(GroupEntry::from_search(entry)?);
            } else {
                elsewhere.get_or_insert(entry.dn);
            }
        }
        if managed.len() > 1 {
            return Err(several_carriers(anchor, &managed));
        }
        if let Some(group) = managed.pop() {
            self.check_safe(&group, anchor)?;
            self.remember(anchor, &group.guid);
            return Ok(Some(group));
        }
        if let Some(dn) = elsewhere {
            return Err(DirectoryError::permanent(format!(
                "refusing to act on anchor {anchor}: the group carrying it is {dn}, outside the \
                 managed OUs ({}); move it into a managed OU to hand it over, or clear its \
                 adminDescription",
                self.config.managed_ous.join("; ")
            )));
        }
        Ok(None)
    }

    /// Looks up many anchors with one search per 200 (`adminDescription` is not
    /// indexed, so every anchor search reads every group of the domain): the groups
    /// found in a managed OU are remembered by objectGUID, and anchors no object carries
    /// are noted as absent, so the commands of a batch need no search of their own.
    /// Anything else (a carrier outside the managed OUs, several carriers) is left to
    /// the lookup of each command, with its refusals. Anchors already remembered are
    /// not searched for.
    pub async fn look_up_anchors(&mut self, anchors: &[&str]) -> Result<(), DirectoryError> {
        self.absent.clear();
        let mut unknown: Vec<String> = anchors
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty() && !self.remembered.contains_key(&anchor_key(a)))
            .collect();
        unknown.sort_by_key(|a| anchor_key(a));
        unknown.dedup_by_key(|a| anchor_key(a));
        let base = self.caps.default_naming_context.clone();
        let attrs = group::attributes_to_read(&self.caps);
        for chunk in unknown.chunks(200) {
            let filter = format!(
                "(&(objectClass=group)(|{}))",
                chunk.iter().map(|a| format!("(adminDescription={})", filter_value(a))).collect::<String>()
            );
            let entries = self.search(&base, Scope::Subtree, &filter, &attrs, Vec::new()).await?;
            let mut carriers: HashMap<String, Vec<GroupEntry>> = HashMap::new();
            let mut outside = HashSet::new();
            for entry in entries {
                let group = GroupEntry::from_search(entry)?;
                let Some(anchor) = group.admin_description.as_deref().map(anchor_key) else { continue };
                if self.in_managed_ous(&group.dn) {
                    carriers.entry(anchor).or_default().push(group);
                } else {
                    outside.insert(anchor);
                }
            }
            for anchor in chunk {
                let key = anchor_key(anchor);
                match carriers.get(&key).map(Vec::as_slice) {
                    Some([group]) if self.check_safe(group, anchor).is_ok() => {
                        let guid = group.guid.clone();
                        self.remember(anchor, &guid);
                    }
                    None if !outside.contains(&key) => {
                        self.absent.insert(key);
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    pub(crate) fn remember(&mut self, anchor: &str, guid: &str) {
        self.remembered.insert(anchor_key(anchor), guid.to_string());
    }

    pub(crate) fn forget(&mut self, anchor: &str) {
        self.remembered.remove(&anchor_key(anchor));
    }

    /// The group with this objectGUID, if it still exists.
    async fn read_group_by_guid(&mut self, guid: &str) -> Result<Option<GroupEntry>, DirectoryError> {
        let attrs = group::attributes_to_read(&self.caps);
        match self.search(&format!("<GUID={guid}>"), Scope::Base, "(objectClass=group)", &attrs, Vec::new()).await {
            Ok(entries) => entries.into_iter().next().map(GroupEntry::from_search).transpose(),
            Err(e) if e.code == Some(NO_SUCH_OBJECT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Strictly below one of the managed OUs.
    /// Where the writer may act on a group carrying its anchor: the managed OUs, and
    /// the adoptable OUs (original groups it adopted are written in place).
    fn in_managed_ous(&self, dn: &str) -> bool {
        self.config.managed_ous.iter().any(|ou| is_below(dn, ou)) || self.is_adopted_place(dn)
    }

    /// In an adoptable OU and in no managed one: an adopted original group, which stays
    /// where its owners put it.
    pub(crate) fn is_adopted_place(&self, dn: &str) -> bool {
        self.config.adopt_converted_groups
            && self.config.adoptable_ous.iter().any(|ou| is_below(dn, ou))
            && !self.config.managed_ous.iter().any(|ou| is_below(dn, ou))
    }

    pub(crate) fn check_safe(&self, group: &GroupEntry, anchor: &str) -> Result<(), DirectoryError> {
        let refuse = |why: String| Err(DirectoryError::permanent(format!("refusing to modify {}: {why}", group.dn)));
        if !self.in_managed_ous(&group.dn) {
            return refuse("it is outside the managed OUs".into());
        }
        if !group.admin_description.as_deref().is_some_and(|d| d.trim().eq_ignore_ascii_case(anchor.trim())) {
            return refuse(format!("it does not carry the anchor {anchor}"));
        }
        if group.admin_count {
            return refuse("adminCount=1 (a protected, privileged group)".into());
        }
        if group.critical {
            return refuse("isCriticalSystemObject=TRUE".into());
        }
        match &group.sid {
            None => refuse("it has no objectSid".into()),
            Some(sid) if is_privileged_sid(sid) => refuse(format!("its SID {sid} is well-known or privileged")),
            Some(_) => Ok(()),
        }
    }

    /// Targets for creates and moves must be a managed OU or lie below one.
    pub(crate) fn check_target_ou(&self, dn: &str, what: &str) -> Result<(), DirectoryError> {
        if self.config.managed_ous.iter().any(|ou| is_at_or_below(dn, ou)) {
            Ok(())
        } else {
            Err(DirectoryError::permanent(format!(
                "refusing to write to {what} {dn}: it is not inside the managed OUs ({})",
                self.config.managed_ous.join("; ")
            )))
        }
    }

    pub(crate) async fn read_group(&mut self, dn: &str) -> Result<GroupEntry, DirectoryError> {
        let attrs = group::attributes_to_read(&self.caps);
        let entry = self
            .search(dn, Scope::Base, "(objectClass=group)", &attrs, Vec::new())
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| DirectoryError::permanent(format!("{dn} is not a group")))?;
        GroupEntry::from_search(entry)
    }

    /// AD computes `allowedChildClassesEffective` from the bind account's rights: the
    /// object classes it may create under `dn`.
    async fn may_create_groups_in(&mut self, dn: &str) -> Result<bool, DirectoryError> {
        let entries =
            self.search(dn, Scope::Base, "(objectClass=*)", &["allowedChildClassesEffective"], Vec::new()).await?;
        Ok(entries.iter().any(|entry| {
            entry
                .attrs
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case("allowedChildClassesEffective"))
                .flat_map(|(_, values)| values)
                .any(|class| class.eq_ignore_ascii_case("group"))
        }))
    }

    pub(crate) async fn exists(&mut self, dn: &str) -> Result<bool, DirectoryError> {
        match self.search(dn, Scope::Base, "(objectClass=*)", &["1.1"], Vec::new()).await {
            Ok(entries) => Ok(!entries.is_empty()),
            Err(e) if e.code == Some(NO_SUCH_OBJECT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ---- timed primitives ---------------------------------------------------------

    async fn ldap(&mut self) -> Result<Ldap, DirectoryError> {
        if self.session.as_mut().is_some_and(|s| s.ldap.is_closed()) {
            tracing::debug!(url = %self.config.url, "LDAP connection closed; reconnecting");
            self.session = None;
        }
        if let Some(session) = &self.session {
            return Ok(session.ldap.clone());
        }
        let started = Instant::now();
        let opened = open_session(&self.config, &self.tls).await;
        self.record(OperationKind::Connect, started, &opened);
        let session = opened?;
        let ldap = session.ldap.clone();
        self.session = Some(session);
        Ok(ldap)
    }

    /// Turns a timed ldap3 outcome into ours, dropping the connection when it can no
    /// longer be trusted (timeouts leave a response in flight; I/O errors kill it).
    fn settle<T>(
        &mut self,
        context: &str,
        outcome: Result<ldap3::result::Result<T>, Elapsed>,
    ) -> Result<T, DirectoryError> {
        match outcome {
            Err(_) => {
                self.session = None;
                Err(DirectoryError::timeout(context))
            }
            Ok(Err(err)) => {
                let (err, drop_connection) = DirectoryError::from_ldap(context, err);
                if drop_connection {
                    self.session = None;
                }
                Err(err)
            }
            Ok(Ok(value)) => Ok(value),
        }
    }

    fn record<T>(&self, kind: OperationKind, started: Instant, result: &Result<T, DirectoryError>) {
        let Some(observer) = &self.observer else {
            return;
        };
        let outcome = match result {
            Ok(_) => OperationOutcome::Success,
            Err(DirectoryError { code: Some(code), .. }) => OperationOutcome::Ldap(*code),
            Err(_) => OperationOutcome::NoAnswer,
        };
        observer(&OperationRecord { kind, outcome, duration: started.elapsed() });
    }

    fn checked(context: &str, result: LdapResult) -> Result<(), DirectoryError> {
        if result.rc == 0 { Ok(()) } else { Err(DirectoryError::from_result(context, result.rc, &result.text)) }
    }

    pub(crate) async fn search(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        controls: Vec<RawControl>,
    ) -> Result<Vec<SearchEntry>, DirectoryError> {
        let context = format!("search {base:?} for {filter}");
        let mut ldap = self.ldap().await?;
        let started = Instant::now();
        if !controls.is_empty() {
            ldap.with_controls(controls);
        }
        let outcome = timeout(self.config.operation_timeout, ldap.search(base, scope, filter, attrs.to_vec())).await;
        let result = self
            .settle(&context, outcome)
            .and_then(|SearchResult(entries, result)| Self::checked(&context, result).map(|()| entries));
        self.record(OperationKind::Search, started, &result);
        Ok(result?
            .into_iter()
            // Continuation references point at other partitions; never ours to follow.
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(SearchEntry::construct)
            .collect())
    }

    /// A search in pages of [`PAGE_SIZE`] (the paged-results control, next to
    /// `controls`): Windows DCs refuse to return more than MaxPageSize (1,000) entries
    /// to one unpaged search. Each page is timed out on its own and counted as one
    /// operation.
    pub(crate) async fn paged_search(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        controls: Vec<RawControl>,
    ) -> Result<Vec<SearchEntry>, DirectoryError> {
        use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
        let context = format!("paged search {base:?} for {filter}");
        let mut ldap = self.ldap().await?;
        let started = Instant::now();
        if !controls.is_empty() {
            ldap.with_controls(controls);
        }
        let adapters: Vec<Box<dyn Adapter<_, _>>> =
            vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(PAGE_SIZE as i32))];
        let opened = timeout(
            self.config.operation_timeout,
            ldap.streaming_search_with(adapters, base, scope, filter, attrs.to_vec()),
        )
        .await;
        let mut stream = self.settle(&context, opened)?;
        let mut entries = Vec::new();
        let result = loop {
            match self.settle(&context, timeout(self.config.operation_timeout, stream.next()).await) {
                Ok(Some(entry)) => entries.push(SearchEntry::construct(entry)),
                Ok(None) => break Self::checked(&context, stream.finish().await),
                Err(error) => break Err(error),
            }
        };
        let result = result.map(|()| entries);
        let pages = result.as_ref().map_or(1, |entries| entries.len().div_ceil(PAGE_SIZE).max(1));
        for _ in 0..pages {
            self.record(OperationKind::Search, started, &result);
        }
        result
    }

    pub(crate) async fn add(&mut self, dn: &str, attrs: Vec<(String, HashSet<String>)>) -> Result<(), DirectoryError> {
        let context = format!("add {dn}");
        let mut ldap = self.ldap().await?;
        let started = Instant::now();
        let outcome = timeout(self.config.operation_timeout, ldap.add(dn, attrs)).await;
        let result = self.settle(&context, outcome).and_then(|r| Self::checked(&context, r));
        self.record(OperationKind::Add, started, &result);
        result
    }

    pub(crate) async fn modify(
        &mut self,
        dn: &str,
        mods: Vec<Mod<String>>,
        controls: Vec<RawControl>,
        context: &str,
    ) -> Result<(), DirectoryError> {
        let mut ldap = self.ldap().await?;
        if !controls.is_empty() {
            ldap.with_controls(controls);
        }
        let started = Instant::now();
        let outcome = timeout(self.config.operation_timeout, ldap.modify(dn, mods)).await;
        let result = self.settle(context, outcome).and_then(|r| Self::checked(context, r));
        self.record(OperationKind::Modify, started, &result);
        result
    }

    pub(crate) async fn modify_dn(
        &mut self,
        dn: &str,
        new_rdn: &str,
        new_superior: Option<&str>,
    ) -> Result<(), DirectoryError> {
        let context = match new_superior {
            Some(sup) => format!("move {dn} to {new_rdn},{sup}"),
            None => format!("rename {dn} to {new_rdn}"),
        };
        let mut ldap = self.ldap().await?;
        let started = Instant::now();
        let outcome = timeout(self.config.operation_timeout, ldap.modifydn(dn, new_rdn, true, new_superior)).await;
        let result = self.settle(&context, outcome).and_then(|r| Self::checked(&context, r));
        self.record(OperationKind::ModifyDn, started, &result);
        result
    }

    pub(crate) async fn delete(&mut self, dn: &str) -> Result<(), DirectoryError> {
        let context = format!("delete {dn}");
        let mut ldap = self.ldap().await?;
        let started = Instant::now();
        let outcome = timeout(self.config.operation_timeout, ldap.delete(dn)).await;
        let result = self.settle(&context, outcome).and_then(|r| Self::checked(&context, r));
        self.record(OperationKind::Delete, started, &result);
        result
    }
}

async fn open_session(config: &DirectoryConfig, tls: &Arc<ClientConfig>) -> Result<Session, DirectoryError> {
    let context = format!("connect to {}", config.url);
    let settings = LdapConnSettings::new()
        .set_conn_timeout(config.operation_timeout)
        .set_starttls(config.starttls)
        .set_config(Arc::clone(tls));
    let connected = timeout(config.operation_timeout, LdapConnAsync::with_settings(settings, &config.url)).await;
    let (conn, ldap) = match connected {
        Err(_) => return Err(DirectoryError::timeout(&context)),
        Ok(Err(err)) => return Err(DirectoryError::from_ldap(&context, err).0),
        Ok(Ok(pair)) => pair,
    };
    let driver = tokio::spawn(async move {
        if let Err(err) = conn.drive().await {
            tracing::debug!(error = %err, "LDAP connection ended");
        }
    });
    let mut session = Session { ldap, driver };
    let context = format!("bind to {} as {}", config.url, config.bind_dn);
    let bound =
        timeout(config.operation_timeout, session.ldap.simple_bind(&config.bind_dn, &config.bind_password)).await;
    match bound {
        Err(_) => Err(DirectoryError::timeout(&context)),
        Ok(Err(err)) => Err(DirectoryError::from_ldap(&context, err).0),
        Ok(Ok(result)) => Directory::checked(&context, result).map(|()| session),
    }
}

/// The key an anchor is remembered under: the comparison AD makes (case-insensitive).
fn anchor_key(anchor: &str) -> String {
    anchor.trim().to_ascii_lowercase()
}

fn several_carriers(anchor: &str, groups: &[GroupEntry]) -> DirectoryError {
    let dns: Vec<&str> = groups.iter().map(|g| g.dn.as_str()).collect();
    DirectoryError::permanent(format!(
        "{} groups carry anchor {anchor} ({}); refusing to guess which one is the \
         written-back group: clear adminDescription on all but one",
        groups.len(),
        dns.join("; ")
    ))
}

fn anchor_filter(anchor: &str) -> String {
    format!("(&(objectClass=group)(adminDescription={}))", filter_value(anchor))
}

pub(crate) fn values(entry: &SearchEntry, name: &str) -> Vec<String> {
    entry
        .attrs
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .flat_map(|(_, values)| values.iter().cloned())
        .collect()
}

pub(crate) fn first_value(entry: &SearchEntry, name: &str) -> Option<String> {
    values(entry, name).into_iter().next()
}

pub(crate) fn permissive_modify() -> RawControl {
    RawControl { ctype: PERMISSIVE_MODIFY_OID.to_string(), crit: false, val: None }
}

pub(crate) fn extended_dn() -> RawControl {
    RawControl {
        ctype: EXTENDED_DN_OID.to_string(),
        crit: true,
        val: Some(crate::codec::EXTENDED_DN_STRING_FORM.to_vec()),
    }
}
