//! The reliability suite's random workload: a seeded PRNG, synced users, a stream of
//! tenant changes with the desired AD state it leads to, and the AD-vs-desired check.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::bail;
use graph_sim::AdminClient;

use crate::pipeline::unique;

/// `GWB_RELIABILITY_SCALE=full` selects the large scale of the reliability suite.
pub fn full_scale() -> bool {
    std::env::var("GWB_RELIABILITY_SCALE").map(|v| v == "full").unwrap_or(false)
}

/// `small` in CI, `full` under `GWB_RELIABILITY_SCALE=full`.
pub fn scaled<T>(small: T, full: T) -> T {
    if full_scale() { full } else { small }
}

/// A small deterministic PRNG (xorshift64*), seeded from `GWB_RELIABILITY_SEED` or the clock;
/// the seed is printed so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn from_env(what: &str) -> Rng {
        let seed = std::env::var("GWB_RELIABILITY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            // Milliseconds, mixed with a per-call counter: tests of one binary start in
            // the same millisecond.
            static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (gwb_runtime::clock::system_now_ms() as u64).wrapping_mul(1_000_003).wrapping_add(calls)
        });
        eprintln!("{what}: GWB_RELIABILITY_SEED={seed}");
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }
}

/// A user present both in AD and (synced) in the tenant.
#[derive(Clone, Debug)]
pub struct SyncedUser {
    pub id: uuid::Uuid,
    pub dn: String,
    pub sid: String,
}

/// Creates `count` AD users in `users_ou` and the same users, synced, in the tenant (one seed).
pub async fn synced_users(
    ad: &crate::ad::LabAd,
    sim: &AdminClient,
    users_ou: &str,
    count: usize,
) -> anyhow::Result<Vec<SyncedUser>> {
    let prefix = unique("ru");
    let created = ad.create_users(users_ou, &prefix, count).await?;
    let seed = graph_sim::Seed {
        users: created
            .iter()
            .map(|(_, sid)| graph_sim::NewUser {
                id: None,
                fields: graph_sim::UserFields {
                    display_name: Some(unique("user")),
                    on_premises_security_identifier: Some(sid.clone()),
                    on_premises_sync_enabled: Some(true),
                    ..graph_sim::UserFields::default()
                },
            })
            .collect(),
        ..graph_sim::Seed::default()
    };
    let result = sim.seed(&seed).await?;
    Ok(result.user_ids.into_iter().zip(created).map(|(id, (dn, sid))| SyncedUser { id, dn, sid }).collect())
}

/// A user synced from AD with this display name (and a UPN made from it) and SID.
pub fn synced_user_named(name: &str, sid: &str) -> graph_sim::NewUser {
    graph_sim::NewUser {
        id: None,
        fields: graph_sim::UserFields {
            display_name: Some(name.into()),
            user_principal_name: Some(format!("{}@lab.example", name.replace(' ', "."))),
            on_premises_security_identifier: Some(sid.into()),
            on_premises_sync_enabled: Some(true),
            ..graph_sim::UserFields::default()
        },
    }
}

pub fn security_fields(name: &str) -> graph_sim::GroupFields {
    graph_sim::GroupFields {
        display_name: Some(name.into()),
        security_enabled: Some(true),
        mail_enabled: Some(false),
        group_types: Some(vec![]),
        ..graph_sim::GroupFields::default()
    }
}

/// A random stream of tenant changes and the desired state it leads to.
pub struct Workload {
    pub users: Vec<SyncedUser>,
    /// Live groups and the indexes (into `users`) of their members.
    pub groups: BTreeMap<uuid::Uuid, BTreeSet<usize>>,
    /// Groups deleted in the tenant.
    pub deleted: BTreeSet<uuid::Uuid>,
    pub changes: usize,
    pub rng: Rng,
}

impl Workload {
    pub fn new(users: Vec<SyncedUser>, rng: Rng) -> Workload {
        Workload { users, groups: BTreeMap::new(), deleted: BTreeSet::new(), changes: 0, rng }
    }

    /// Creates `count` groups with a few random members each (one change per group).
    pub async fn create_groups(&mut self, sim: &AdminClient, count: usize) -> anyhow::Result<()> {
        for _ in 0..count {
            self.create_group(sim).await?;
        }
        Ok(())
    }

    async fn create_group(&mut self, sim: &AdminClient) -> anyhow::Result<()> {
        let members: BTreeSet<usize> = (0..self.rng.below(4)).map(|_| self.rng.below(self.users.len())).collect();
        let ids = members.iter().map(|&i| self.users[i].id).collect();
        let group = sim
            .create_group(&graph_sim::NewGroup {
                id: None,
                fields: security_fields(&unique("Rel Group")),
                members: ids,
            })
            .await?
            .group
            .id;
        self.groups.insert(group, members);
        self.changes += 1;
        Ok(())
    }

    /// One random change: add or remove a member, rename, create or delete a group.
    pub async fn step(&mut self, sim: &AdminClient) -> anyhow::Result<()> {
        let roll = self.rng.below(100);
        if self.groups.len() < 3 || roll < 10 {
            return self.create_group(sim).await;
        }
        let keys: Vec<uuid::Uuid> = self.groups.keys().copied().collect();
        let group = keys[self.rng.below(keys.len())];
        if roll < 55 {
            let user = self.rng.below(self.users.len());
            sim.add_members(group, &[self.users[user].id]).await?;
            self.groups.entry(group).or_default().insert(user);
        } else if roll < 85 {
            let current: Vec<usize> = self.groups[&group].iter().copied().collect();
            if current.is_empty() {
                let user = self.rng.below(self.users.len());
                sim.add_members(group, &[self.users[user].id]).await?;
                self.groups.entry(group).or_default().insert(user);
            } else {
                let user = current[self.rng.below(current.len())];
                sim.remove_members(group, &[self.users[user].id]).await?;
                self.groups.entry(group).or_default().remove(&user);
            }
        } else if roll < 96 {
            sim.update_group(
                group,
                &graph_sim::GroupFields { display_name: Some(unique("Renamed")), ..Default::default() },
                &[],
            )
            .await?;
        } else {
            sim.delete_group(group, true).await?;
            self.groups.remove(&group);
            self.deleted.insert(group);
        }
        self.changes += 1;
        Ok(())
    }

    /// The desired AD state: anchor → member DNs (lower case).
    pub fn desired(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.groups
            .iter()
            .map(|(g, members)| {
                (format!("Group_{g}"), members.iter().map(|&i| self.users[i].dn.to_lowercase()).collect())
            })
            .collect()
    }
}

/// One group as found in AD by [`ad_groups`].
#[derive(Clone, Debug)]
pub struct AdGroup {
    pub dn: String,
    pub anchor: Option<String>,
    pub sam: String,
    /// Member DNs, lower case.
    pub members: BTreeSet<String>,
}

/// Every group under `base` (subtree) with its anchor and plain member DNs, read with a
/// connection of its own (ldap3 only, independent of the product).
pub async fn ad_groups(ad: &crate::ad::LabAd, base: &str) -> anyhow::Result<Vec<AdGroup>> {
    use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ad.ca_file)? {
        roots.add(cert?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let settings = ldap3::LdapConnSettings::new()
        .set_config(std::sync::Arc::new(config))
        .set_conn_timeout(Duration::from_secs(10));
    let (conn, mut ldap) = ldap3::LdapConnAsync::with_settings(settings, &ad.url).await?;
    ldap3::drive!(conn);
    ldap.simple_bind(&ad.bind_dn, ad.password()).await?.success()?;
    let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(500))];
    let mut stream = ldap
        .streaming_search_with(
            adapters,
            base,
            ldap3::Scope::Subtree,
            "(objectClass=group)",
            vec!["adminDescription", "sAMAccountName", "member"],
        )
        .await?;
    let mut groups = Vec::new();
    while let Some(entry) = stream.next().await? {
        let entry = ldap3::SearchEntry::construct(entry);
        let get = |name: &str| {
            entry.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        groups.push(AdGroup {
            anchor: get("adminDescription").into_iter().next(),
            sam: get("sAMAccountName").into_iter().next().unwrap_or_default(),
            members: get("member").into_iter().map(|m| m.to_lowercase()).collect(),
            dn: entry.dn.clone(),
        });
    }
    stream.finish().await.success()?;
    let _ = ldap.unbind().await;
    Ok(groups)
}

/// Compares the groups in `groups_ou` with `desired` (anchor → member DNs): no group
/// missing or duplicated, no group that should not be there, no member lost or extra.
pub async fn compare_with_desired(
    ad: &crate::ad::LabAd,
    groups_ou: &str,
    desired: &BTreeMap<String, BTreeSet<String>>,
) -> anyhow::Result<()> {
    let found = ad_groups(ad, groups_ou).await?;
    let mut by_anchor: BTreeMap<String, Vec<&AdGroup>> = BTreeMap::new();
    let mut problems = Vec::new();
    for group in &found {
        match &group.anchor {
            Some(anchor) => by_anchor.entry(anchor.clone()).or_default().push(group),
            None => problems.push(format!("unanchored group {}", group.dn)),
        }
    }
    for (anchor, members) in desired {
        match by_anchor.get(anchor).map(Vec::as_slice) {
            None | Some([]) => problems.push(format!("missing {anchor}")),
            Some([one]) => {
                let lost: Vec<_> = members.difference(&one.members).collect();
                let extra: Vec<_> = one.members.difference(members).collect();
                if !lost.is_empty() || !extra.is_empty() {
                    problems.push(format!("{anchor}: lost {lost:?}, extra {extra:?}"));
                }
            }
            Some(many) => problems.push(format!("{anchor} duplicated {} times", many.len())),
        }
    }
    for anchor in by_anchor.keys().filter(|a| !desired.contains_key(*a)) {
        problems.push(format!("extra group {anchor}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let shown: Vec<_> = problems.iter().take(20).cloned().collect();
        bail!(
            "AD differs from the desired state in {} ways (of {} groups wanted, {} found):\n{}",
            problems.len(),
            desired.len(),
            found.len(),
            shown.join("\n")
        )
    }
}
