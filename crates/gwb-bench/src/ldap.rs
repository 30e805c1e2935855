//! Direct LDAP for the benchmarks: fixtures (users), the baseline loads the pipeline is
//! compared against, convergence checks, and a byte-counting TCP proxy in front of the
//! DC. Uses ldap3 alone, never the product's client, so the baseline is independent.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use gwb_tests::ad::{binary, escape_dn_value, escape_filter_value, first, sid_from_bytes};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Universal security group, as the writer creates security groups.
pub const UNIVERSAL_SECURITY: &str = "-2147483640";
/// NORMAL_ACCOUNT | ACCOUNTDISABLE: a disabled user needs no password, so it is quick.
const DISABLED_USER: &str = "514";
/// Fixture users live here, shared by every scenario and kept between runs: creating
/// them is the slowest part of a full run, so a second run reuses them.
pub const USERS_OU: &str = "BenchUsers";
/// Connections used by fixture and baseline loads. More than one keeps the DC's single
/// writer busy while the client parses answers; more than a few gains nothing on Samba.
const CONNECTIONS: usize = 4;
const IN_FLIGHT: usize = 16;
/// From this many missing fixture users on, they are loaded offline (`lab-ad.sh load`):
/// Samba creates ~40–70 users/s over LDAP, slower as the directory grows, while one
/// offline `ldbadd` transaction creates several hundred a second. Below it (smoke scale,
/// a few stragglers) LDAP is quicker than a DC restart and needs no access to its files.
pub const BULK_THRESHOLD: usize = 2000;

/// Where the lab DC is and how to bind (from the `GWB_LAB_*` environment).
#[derive(Clone)]
pub struct Lab {
    pub url: String,
    pub ca_file: PathBuf,
    pub bind_dn: String,
    pub password: String,
    pub base_dn: String,
    pub password_file: PathBuf,
    /// The lab's directory (`GWB_LAB_DIR`, set by `scripts/lab-ad.sh`); its name is the
    /// lab's name. Needed only for offline fixture loads.
    pub dir: Option<PathBuf>,
}

impl Lab {
    pub fn from_env() -> anyhow::Result<Lab> {
        let var = |name: &str| {
            std::env::var(name).with_context(|| {
                format!("{name} is not set: run scripts/bench.sh (or scripts/test.sh), or source $(scripts/lab-ad.sh env bench)")
            })
        };
        let password_file = PathBuf::from(var("GWB_LAB_LDAP_PASSWORD_FILE")?);
        let password = std::fs::read_to_string(&password_file)?.trim_end_matches(['\r', '\n']).to_string();
        Ok(Lab {
            url: var("GWB_LAB_LDAP_URL")?,
            ca_file: PathBuf::from(var("GWB_LAB_LDAP_CA_FILE")?),
            bind_dn: var("GWB_LAB_LDAP_BIND_DN")?,
            base_dn: var("GWB_LAB_BASE_DN")?,
            password,
            password_file,
            dir: std::env::var_os("GWB_LAB_DIR").map(PathBuf::from).filter(|d| d.join("private/sam.ldb").exists()),
        })
    }

    /// `host:port` of the DC, for the proxy.
    pub fn host_port(&self) -> anyhow::Result<(String, u16)> {
        let rest = self.url.strip_prefix("ldaps://").ok_or_else(|| anyhow!("{} is not an ldaps:// URL", self.url))?;
        let rest = rest.trim_end_matches('/');
        match rest.rsplit_once(':') {
            Some((host, port)) => Ok((host.to_string(), port.parse()?)),
            None => Ok((rest.to_string(), 636)),
        }
    }

    pub async fn connect(&self) -> anyhow::Result<Ldap> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca_file)
            .with_context(|| format!("reading {}", self.ca_file.display()))?
        {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let settings = LdapConnSettings::new().set_config(Arc::new(config)).set_conn_timeout(Duration::from_secs(10));
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .with_context(|| format!("connecting to {}", self.url))?;
        ldap3::drive!(conn);
        ldap.simple_bind(&self.bind_dn, &self.password).await?.success().context("binding to the lab DC")?;
        Ok(ldap)
    }

    pub async fn pool(&self, n: usize) -> anyhow::Result<Vec<Ldap>> {
        let mut pool = Vec::with_capacity(n);
        for _ in 0..n {
            pool.push(self.connect().await?);
        }
        Ok(pool)
    }

    /// Creates `OU=<name>,<parent>` (existing is fine); returns its DN.
    pub async fn ensure_ou(&self, ldap: &mut Ldap, parent: &str, name: &str) -> anyhow::Result<String> {
        let dn = format!("OU={},{parent}", escape_dn_value(name));
        let result = ldap.add(&dn, vec![("objectClass", HashSet::from(["organizationalUnit"]))]).await?;
        match result.rc {
            0 | 68 => Ok(dn),
            rc => bail!("creating {dn}: LDAP {rc} {}", result.text),
        }
    }

    /// Deletes a subtree (tree-delete control); absent is fine. Big subtrees are slow on
    /// Samba, so callers do this after timing.
    pub async fn delete_subtree(&self, ldap: &mut Ldap, dn: &str) -> anyhow::Result<()> {
        let result = ldap
            .with_controls(ldap3::controls::RawControl {
                ctype: "1.2.840.113556.1.4.805".into(),
                crit: true,
                val: None,
            })
            .delete(dn)
            .await?;
        match result.rc {
            0 | 32 => Ok(()),
            rc => bail!("deleting {dn}: LDAP {rc} {}", result.text),
        }
    }
}

pub async fn paged_search(
    ldap: &mut Ldap,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: &[&str],
) -> anyhow::Result<Vec<SearchEntry>> {
    let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(1000))];
    let mut stream = ldap.streaming_search_with(adapters, base, scope, filter, attrs.to_vec()).await?;
    let mut entries = Vec::new();
    while let Some(entry) = stream.next().await? {
        entries.push(SearchEntry::construct(entry));
    }
    stream.finish().await.success().with_context(|| format!("searching {base} for {filter}"))?;
    Ok(entries)
}

/// A fixture user: its DN and real objectSid.
#[derive(Clone, Debug)]
pub struct User {
    pub dn: String,
    pub sid: String,
}

/// How the fixture users of one scenario came to exist.
#[derive(Clone, Debug)]
pub struct Fixture {
    /// Users created by this call (0 when all were there from an earlier run).
    pub created: usize,
    pub seconds: f64,
    /// `existing`, `ldap` (adds over LDAPS) or `offline` (`lab-ad.sh load`, DC restart included).
    pub method: &'static str,
}

impl Fixture {
    pub fn to_json(&self) -> serde_json::Value {
        let rate =
            if self.created > 0 && self.seconds > 0.0 { (self.created as f64 / self.seconds).round() } else { 0.0 };
        serde_json::json!({
            "created": self.created, "seconds": (self.seconds * 100.0).round() / 100.0,
            "users_per_second": rate, "method": self.method,
        })
    }
}

/// Makes sure users `bu-000000 … bu-<count-1>` exist in `OU=BenchUsers` and returns
/// them in order, with how the missing ones were created.
pub async fn ensure_users(lab: &Lab, count: usize) -> anyhow::Result<(Vec<User>, Fixture)> {
    let mut ldap = lab.connect().await?;
    let ou = lab.ensure_ou(&mut ldap, &lab.base_dn, USERS_OU).await?;
    let existing = read_users(&mut ldap, &ou, count).await?;
    let missing: Vec<usize> = (0..count).filter(|n| !existing.contains_key(&user_cn(*n))).collect();
    let started = Instant::now();
    let bulk = std::env::var("GWB_BENCH_BULK").map(|v| v != "0").unwrap_or(true);
    let method = match (missing.len(), &lab.dir) {
        (0, _) => "existing",
        (n, Some(dir)) if n >= BULK_THRESHOLD && bulk => {
            let _ = ldap.unbind().await;
            load_offline(dir, &ou, &missing).await?;
            ldap = lab.connect().await?;
            "offline"
        }
        _ => {
            add_over_ldap(lab, &ou, &missing).await?;
            "ldap"
        }
    };
    let fixture = Fixture { created: missing.len(), seconds: started.elapsed().as_secs_f64(), method };
    if !missing.is_empty() {
        eprintln!(
            "fixture: {} users created in {:.1} s ({method}), {}",
            missing.len(),
            fixture.seconds,
            fixture.to_json()["users_per_second"]
        );
    }
    let mut all = if missing.is_empty() { existing } else { read_users(&mut ldap, &ou, count).await? };
    let _ = ldap.unbind().await;
    let users = (0..count)
        .map(|n| all.remove(&user_cn(n)).ok_or_else(|| anyhow!("user {} missing after creation", user_cn(n))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((users, fixture))
}

/// The same users as [`add_over_ldap`] would create (disabled normal accounts, no
/// password), written to one LDIF and added by `scripts/lab-ad.sh load <lab> <ldif>`:
/// offline, through Samba's own samdb modules (so objectSid, RIDs, defaults and
/// security descriptors are what an LDAP add gives), in one transaction. The DC is
/// stopped for the load and answers LDAPS again when the script returns.
async fn load_offline(lab_dir: &std::path::Path, ou: &str, missing: &[usize]) -> anyhow::Result<()> {
    use std::io::Write;
    let name =
        lab_dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("no lab name in {}", lab_dir.display()))?;
    let ldif_path = std::env::temp_dir().join(format!("gwb-bench-users-{}.ldif", std::process::id()));
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&ldif_path)?);
        for n in missing {
            let cn = user_cn(*n);
            writeln!(
                out,
                "dn: CN={cn},{ou}\nobjectClass: user\nsAMAccountName: {cn}\nuserAccountControl: {DISABLED_USER}\n"
            )?;
        }
        out.flush()?;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lab-ad.sh");
    eprintln!(
        "fixture: loading {} users offline into lab '{name}' ({} load; the DC restarts)",
        missing.len(),
        script.display()
    );
    let output = tokio::process::Command::new(&script)
        .arg("load")
        .arg(name)
        .arg(&ldif_path)
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    let _ = std::fs::remove_file(&ldif_path);
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    anyhow::ensure!(output.status.success(), "{} load {name} failed ({})", script.display(), output.status);
    Ok(())
}

/// Adds the users over LDAPS, several connections with many adds in flight.
async fn add_over_ldap(lab: &Lab, ou: &str, missing: &[usize]) -> anyhow::Result<()> {
    let pool = lab.pool(CONNECTIONS).await?;
    futures::stream::iter(missing.iter().copied())
        .map(|n| {
            let mut ldap = pool[n % pool.len()].clone();
            let cn = user_cn(n);
            let dn = format!("CN={cn},{ou}");
            async move {
                let result = ldap
                    .add(
                        &dn,
                        vec![
                            ("objectClass", HashSet::from(["user"])),
                            ("sAMAccountName", HashSet::from([cn.as_str()])),
                            ("userAccountControl", HashSet::from([DISABLED_USER])),
                        ],
                    )
                    .await?;
                match result.rc {
                    // 68: a previous interrupted run created it already.
                    0 | 68 => Ok(()),
                    rc => Err(anyhow!("adding {dn}: LDAP {rc} {}", result.text)),
                }
            }
        })
        .buffer_unordered(CONNECTIONS * IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn user_cn(n: usize) -> String {
    format!("bu-{n:06}")
}

/// Up to this many users are read by name (indexed `cn` lookups, 500 a search); more
/// are read with one paged search of the whole OU. Once the OU holds the 250,000 users
/// of large-group, reading all of it for a scenario that needs 50 takes tens of seconds.
const READ_BY_NAME_MAX: usize = 20_000;

/// The fixture users `bu-000000 … bu-<count-1>` that exist (and, for big counts, any
/// other `bu-*` user in the OU).
async fn read_users(ldap: &mut Ldap, ou: &str, count: usize) -> anyhow::Result<BTreeMap<String, User>> {
    let mut entries = Vec::new();
    if count <= READ_BY_NAME_MAX {
        let names: Vec<String> = (0..count).map(user_cn).collect();
        for chunk in names.chunks(500) {
            let terms: String = chunk.iter().map(|cn| format!("(cn={cn})")).collect();
            entries.extend(
                paged_search(
                    ldap,
                    ou,
                    Scope::OneLevel,
                    &format!("(&(objectClass=user)(|{terms}))"),
                    &["cn", "objectSid"],
                )
                .await?,
            );
        }
    } else {
        entries =
            paged_search(ldap, ou, Scope::OneLevel, "(&(objectClass=user)(cn=bu-*))", &["cn", "objectSid"]).await?;
    }
    let mut users = BTreeMap::new();
    for entry in entries {
        let sid = binary(&entry, "objectSid")
            .and_then(|b| sid_from_bytes(&b))
            .ok_or_else(|| anyhow!("{} has no objectSid", entry.dn))?;
        let cn = first(&entry, "cn").unwrap_or_default();
        users.insert(cn, User { dn: entry.dn, sid });
    }
    Ok(users)
}

/// One group of the end state a scenario loads.
pub struct GroupLoad {
    pub cn: String,
    pub sam: String,
    pub anchor: String,
    pub member_dns: Vec<String>,
}

/// The baseline: the fastest direct load of the same end state we found on Samba.
/// Each group is created with its first `batch` members in the add itself, the rest go
/// in modify/add batches of `batch` values; groups are spread over several connections
/// with several operations in flight, since Samba serialises writes anyway and
/// pipelining hides the client's and TLS's share.
pub async fn baseline_load(lab: &Lab, ou: &str, groups: &[GroupLoad], batch: usize) -> anyhow::Result<Duration> {
    let pool = lab.pool(CONNECTIONS).await?;
    let started = Instant::now();
    futures::stream::iter(groups.iter().enumerate())
        .map(|(i, group)| {
            let mut ldap = pool[i % pool.len()].clone();
            async move {
                let dn = format!("CN={},{ou}", escape_dn_value(&group.cn));
                let mut chunks = group.member_dns.chunks(batch.max(1));
                let first_members: HashSet<&str> = chunks.next().unwrap_or(&[]).iter().map(String::as_str).collect();
                let mut attrs = vec![
                    ("objectClass", HashSet::from(["group"])),
                    ("sAMAccountName", HashSet::from([group.sam.as_str()])),
                    ("groupType", HashSet::from([UNIVERSAL_SECURITY])),
                    ("adminDescription", HashSet::from([group.anchor.as_str()])),
                ];
                if !first_members.is_empty() {
                    attrs.push(("member", first_members));
                }
                ldap.add(&dn, attrs).await?.success().with_context(|| format!("baseline add {dn}"))?;
                for chunk in chunks {
                    let values: HashSet<&str> = chunk.iter().map(String::as_str).collect();
                    ldap.modify(&dn, vec![Mod::Add("member", values)])
                        .await?
                        .success()
                        .with_context(|| format!("baseline member add {dn}"))?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONNECTIONS * 2)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed())
}

/// Groups in `ou`: anchor → DN.
pub async fn groups_in(ldap: &mut Ldap, ou: &str) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(paged_search(ldap, ou, Scope::OneLevel, "(objectClass=group)", &["adminDescription"])
        .await?
        .into_iter()
        .map(|e| (first(&e, "adminDescription").unwrap_or_default(), e.dn))
        .collect())
}

/// Member DNs of a group, read in explicit ranges (Samba answers `N-*` with
/// everything, which is fine, but a Windows DC would cap it).
pub async fn member_dns(ldap: &mut Ldap, group_dn: &str) -> anyhow::Result<BTreeSet<String>> {
    const WINDOW: usize = 5000;
    let mut out = BTreeSet::new();
    let mut start = 0usize;
    loop {
        let attribute = format!("member;range={start}-{}", start + WINDOW - 1);
        let (entries, _) =
            ldap.search(group_dn, Scope::Base, "(objectClass=*)", vec![attribute.as_str()]).await?.success()?;
        let entry = entries
            .into_iter()
            .next()
            .map(SearchEntry::construct)
            .ok_or_else(|| anyhow!("{group_dn} does not exist"))?;
        let mut next = None;
        for (name, values) in entry.attrs {
            let lower = name.to_ascii_lowercase();
            if let Some(range) = lower.strip_prefix("member;range=") {
                if let Some((_, high)) = range.split_once('-')
                    && high != "*"
                {
                    next = Some(high.parse::<usize>()? + 1);
                }
            } else if lower != "member" {
                continue;
            }
            out.extend(values.into_iter().map(|v| v.to_ascii_lowercase()));
        }
        match next {
            Some(n) if n > start => start = n,
            _ => return Ok(out),
        }
    }
}

/// Whether `user_dn` is a member of `group_dn` now: a base search on the user with a
/// `memberOf` filter, the cheapest read that answers it (one entry, no values back).
pub async fn is_member(ldap: &mut Ldap, user_dn: &str, group_dn: &str) -> anyhow::Result<bool> {
    let filter = format!("(memberOf={})", escape_filter_value(group_dn));
    let (entries, _) = ldap.search(user_dn, Scope::Base, &filter, vec!["1.1"]).await?.success()?;
    Ok(!entries.is_empty())
}

/// A TCP proxy on the DC's own address (so its certificate's IP SAN still matches)
/// that counts the bytes clients send to the DC: the writer's LDAP traffic.
pub struct ByteProxy {
    pub port: u16,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ByteProxy {
    pub async fn start(host: &str, port: u16) -> anyhow::Result<ByteProxy> {
        let listener = tokio::net::TcpListener::bind((host, 0)).await?;
        let local = listener.local_addr()?.port();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let upstream = format!("{host}:{port}");
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Ok(ByteProxy { port: local, sent, task })
    }

    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for ByteProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
