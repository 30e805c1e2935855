//! Runs the real product binaries (graph-sim, gwb-collector, gwb-planner, gwb-writer)
//! as separate processes against the real RabbitMQ and the lab AD DC, each test with
//! its own bus namespace, OUs, state files and ports so tests can run in parallel.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use graph_sim::AdminClient;
use gwb_bus::BusConfig;

pub const TENANT_ID: &str = "6a1c3f0e-1111-4c4c-9d9d-0123456789ab";
pub const CLIENT_ID: &str = "b7f4e2d1-2222-4e4e-8f8f-0123456789ab";

/// Where `cargo build --workspace --bins` put the binaries (scripts/test.sh builds them).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug").join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --workspace --bins`, done by scripts/test.sh)",
            path.display()
        );
    }
    Ok(path)
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Settings a test may change before starting the pipeline.
pub struct Options {
    /// The OU groups are written to (must exist).
    pub target_ou: String,
    /// Extra `[scope]` TOML lines for the planner.
    pub scope_toml: String,
    /// Extra `[planner]` TOML lines.
    pub planner_toml: String,
    /// Extra planner sections (e.g. `[deletion]`), appended verbatim.
    pub planner_sections: String,
    /// OU for groups moved away (`move` actions); also managed by the writer.
    pub retired_ou: Option<String>,
    pub poll_interval_seconds: f64,
    /// CA file the writer trusts for LDAPS (default: the lab's `GWB_LAB_LDAP_CA_FILE`).
    pub writer_ca_file: Option<PathBuf>,
    /// Extra `[graph]` TOML lines for the collector (e.g. `request_timeout_seconds = 2`).
    pub collector_graph_toml: String,
    /// Extra writer sections (e.g. `[metrics]`), appended verbatim.
    pub writer_sections: String,
}

impl Options {
    /// Security groups in scope, writing to `target_ou`, 0.5 s polls.
    pub fn new(target_ou: &str) -> Self {
        Options {
            target_ou: target_ou.to_string(),
            scope_toml: "security_groups = true".into(),
            planner_toml: String::new(),
            planner_sections: String::new(),
            retired_ou: None,
            poll_interval_seconds: 0.5,
            writer_ca_file: None,
            collector_graph_toml: String::new(),
            writer_sections: String::new(),
        }
    }
}

pub struct Pipeline {
    pub dir: PathBuf,
    pub sim: AdminClient,
    pub sim_url: String,
    pub bus: BusConfig,
    pub control_endpoint: String,
    pub token_file: PathBuf,
    /// Where each service serves `/metrics`: (service, address).
    pub metrics: Vec<(String, std::net::SocketAddr)>,
    children: Vec<(String, Child)>,
}

impl Pipeline {
    pub async fn start(options: Options) -> anyhow::Result<Pipeline> {
        let dir = std::env::temp_dir().join(unique("gwb-e2e"));
        std::fs::create_dir_all(&dir)?;
        let secret_file = dir.join("client-secret");
        gwb_runtime::secret::write_secret_file(&secret_file, "sim-client-secret-value")?;
        let token_file = dir.join("control-token");
        gwb_runtime::secret::write_secret_file(&token_file, &uuid::Uuid::new_v4().to_string())?;
        let password_file = dir.join("bind-password");
        let lab_password_file =
            std::env::var("GWB_LAB_LDAP_PASSWORD_FILE").context("GWB_LAB_LDAP_PASSWORD_FILE (run scripts/test.sh)")?;
        let password = std::fs::read_to_string(&lab_password_file)?;
        gwb_runtime::secret::write_secret_file(&password_file, password.trim_end())?;

        let mut children = Vec::new();
        let addr_file = dir.join("graph-sim.addr");
        let sim = spawn(
            "graph-sim",
            &dir,
            Command::new(binary("graph-sim")?)
                .arg("--listen")
                .arg("127.0.0.1:0")
                .args(["--tenant-id", TENANT_ID, "--client-id", CLIENT_ID])
                .arg("--client-secret-file")
                .arg(&secret_file)
                .arg("--addr-file")
                .arg(&addr_file)
                .args(["--max-objects-per-page", "3", "--min-objects-per-page", "1", "--empty-page-every", "4"]),
        )?;
        children.push(("graph-sim".to_string(), sim));
        let sim_url = wait_for_file(&addr_file, Duration::from_secs(20)).await?;
        let sim_admin = AdminClient::new(sim_url.clone())?;

        let namespace = unique("gwbtest");
        let bus = BusConfig { namespace: namespace.clone(), command_partitions: 2, ..BusConfig::default() };
        let control_port = free_port()?;
        let control_endpoint = format!("http://127.0.0.1:{control_port}");
        let writer_port = free_port()?;
        let collector_port = free_port()?;
        let ldap_url = std::env::var("GWB_LAB_LDAP_URL")?;
        let ca_file = match &options.writer_ca_file {
            Some(path) => path.display().to_string(),
            None => std::env::var("GWB_LAB_LDAP_CA_FILE")?,
        };
        let bind_dn = std::env::var("GWB_LAB_LDAP_BIND_DN")?;
        let bus_toml = format!("[bus]\nnamespace = \"{namespace}\"\ncommand_partitions = 2\n");

        let collector = format!(
            "[graph]\nlogin_endpoint = \"{sim_url}\"\ngraph_endpoint = \"{sim_url}\"\nscope = \"https://graph.microsoft.com/.default\"\n\
             tenant_id = \"{TENANT_ID}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\napi_version = \"beta\"\n\
             max_backoff_seconds = 2\n{}\n\n[collector]\npoll_interval_seconds = {}\nstate_path = \"{}\"\n\n\
             [collector.control]\nlisten = \"127.0.0.1:{collector_port}\"\ntoken_file = \"{}\"\n\n{bus_toml}",
            secret_file.display(),
            options.collector_graph_toml,
            options.poll_interval_seconds,
            dir.join("collector.db").display(),
            token_file.display(),
        );
        let planner = format!(
            "[planner]\nstate_path = \"{}\"\ndefault_ou = \"{}\"\n{}{}\n\n[scope]\n{}\n\n[control]\nlisten = \"127.0.0.1:{control_port}\"\ntoken_file = \"{}\"\n\n\
             [coordination]\ncollector_endpoint = \"http://127.0.0.1:{collector_port}\"\nwriter_endpoints = [\"http://127.0.0.1:{writer_port}\"]\ntoken_file = \"{}\"\n\n{}\n\n{bus_toml}",
            dir.join("planner.db").display(),
            options.target_ou,
            options.retired_ou.as_ref().map(|ou| format!("retired_ou = \"{ou}\"\n")).unwrap_or_default(),
            options.planner_toml,
            options.scope_toml,
            token_file.display(),
            token_file.display(),
            options.planner_sections,
        );
        let writer = format!(
            "[directory]\nurl = \"{ldap_url}\"\nca_file = \"{ca_file}\"\nbind_dn = \"{bind_dn}\"\nbind_password_file = \"{}\"\nmanaged_ous = [{}]\n\n\
             [writer]\nid = \"{namespace}\"\nstatus_interval_seconds = 2\ncontrol_listen = \"127.0.0.1:{writer_port}\"\ncontrol_token_file = \"{}\"\n\n{}\n\n{bus_toml}",
            password_file.display(),
            std::iter::once(&options.target_ou)
                .chain(options.retired_ou.as_ref())
                .map(|ou| format!("\"{ou}\""))
                .collect::<Vec<_>>()
                .join(", "),
            token_file.display(),
            options.writer_sections,
        );
        let mut metrics = Vec::new();
        for (name, text) in [("gwb-planner", planner), ("gwb-writer", writer), ("gwb-collector", collector)] {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
            std::fs::write(dir.join(format!("{name}.toml")), format!("{text}\n[metrics]\nlisten = \"{addr}\"\n"))?;
            children.push((name.to_string(), spawn_service(name, &dir)?));
            metrics.push((name.to_string(), addr));
        }
        let pipeline = Pipeline { dir, sim: sim_admin, sim_url, bus, control_endpoint, token_file, metrics, children };
        pipeline
            .eventually("the planner's control API answers", Duration::from_secs(30), || async {
                let out = pipeline.gwbctl(&["status"]).await?;
                anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                Ok(())
            })
            .await?;
        Ok(pipeline)
    }

    /// Kills one service (SIGKILL: no clean shutdown) and starts it again with the same
    /// configuration and state.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self.children.iter().position(|(n, _)| n == name).with_context(|| format!("no service {name}"))?;
        let child = &mut self.children[index].1;
        child.kill().await?;
        child.wait().await?;
        let previous = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        std::fs::write(self.dir.join(format!("{name}.previous.log")), previous)?;
        self.children[index].1 = spawn_service(name, &self.dir)?;
        if name == "gwb-planner" {
            self.eventually("the restarted planner answers", Duration::from_secs(30), || async {
                let out = self.gwbctl(&["status"]).await?;
                anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Runs gwbctl against this pipeline's planner with its token.
    pub async fn gwbctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(binary("gwbctl")?)
            .arg("--endpoint")
            .arg(&self.control_endpoint)
            .arg("--token-file")
            .arg(&self.token_file)
            .args(args)
            .output()
            .await?)
    }

    /// gwbctl with `--json`, parsed; fails on a non-zero exit.
    pub async fn gwbctl_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.gwbctl(&all).await?;
        anyhow::ensure!(out.status.success(), "gwbctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Polls `check` until it succeeds or `timeout` passes; the last error explains.
    pub async fn eventually<F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let start = Instant::now();
        loop {
            let error = match check().await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if start.elapsed() > timeout {
                bail!("timed out after {:?} waiting until {what}: {error:#}\n{}", timeout, self.log_tails());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of every service's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut text = String::new();
        for (name, _) in &self.children {
            let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            text.push_str(&format!("--- {name} log (tail) ---\n{tail}\n"));
        }
        text
    }

    /// Whole log of one service.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Stops every process and removes the bus namespace.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for (_, child) in &mut self.children {
            if let Some(pid) = child.id() {
                // SIGTERM first: services shut down cleanly.
                let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
        }
        for (name, child) in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
                eprintln!("{name} did not stop within 10 s of SIGTERM");
            }
        }
        gwb_bus::delete_topology(&self.bus).await?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Services read `GWB_*` variables as configuration overrides; the test's own
/// (`GWB_LAB_*`, set by scripts/test.sh) must not leak into them.
pub fn without_gwb_env(command: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars() {
        if key.starts_with("GWB_") {
            command.env_remove(key);
        }
    }
    command
}

fn spawn_service(name: &str, dir: &Path) -> anyhow::Result<Child> {
    spawn(name, dir, Command::new(binary(name)?).arg("--config").arg(dir.join(format!("{name}.toml"))))
}

fn spawn(name: &str, dir: &Path, command: &mut Command) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    without_gwb_env(command)
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("RUST_LOG", std::env::var("GWB_TEST_LOG").unwrap_or_else(|_| "info".into()))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

/// Waits until `path` exists with content (an address file a service writes).
pub async fn wait_for_file(path: &Path, timeout: Duration) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return Ok(text.trim().to_string());
        }
        if start.elapsed() > timeout {
            bail!("{} did not appear within {timeout:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port (bound and released; fine for tests on one machine).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

// ---------------------------------------------------------------------------------
// Reliability helpers (tests/tests/reliability_*.rs): process control, a random
// workload with its desired state, and AD-vs-desired comparison.
// ---------------------------------------------------------------------------------

impl Pipeline {
    /// Process id of a running service (`graph-sim`, `gwb-planner`, `gwb-writer`, `gwb-collector`).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children.iter().find(|(n, _)| n == name).and_then(|(_, child)| child.id())
    }

    /// The generated configuration file of a service.
    pub fn config_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    /// Resident set size of a service in KiB (from /proc).
    pub fn rss_kib(&self, name: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(name)?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// CPU time (user + system, all threads) a service has used, from /proc.
    pub fn cpu_seconds(&self, name: &str) -> Option<f64> {
        cpu_seconds(self.pid(name)?)
    }

    /// The service's `/metrics` text (a plain HTTP/1.0 GET on its metrics address).
    pub async fn scrape(&self, name: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self
            .metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .with_context(|| format!("no metrics address for {name}"))?;
        let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
        stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await??;
        Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or(response))
    }

    /// Log of a service including what it wrote before its last restart.
    pub fn full_log(&self, name: &str) -> String {
        let previous = std::fs::read_to_string(self.dir.join(format!("{name}.previous.log"))).unwrap_or_default();
        format!("{previous}{}", self.log(name))
    }
}

/// CPU time (user + system, all threads) of a process, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

/// Sum of every sample of metric `name` (exact name, any labels) whose label text
/// contains all of `labels` (e.g. `["result=\"ok\""]`), in Prometheus text format.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = key.split_once('{').unwrap_or((key, ""));
            (metric == name && labels.iter().all(|l| label_text.contains(l))).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

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
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(42)
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

use std::collections::{BTreeMap, BTreeSet};

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

/// `snapshot_outside` reduced to the domain's own objects: everything not below an OU
/// (CN=Users, CN=Builtin, CN=System, the privileged groups, krbtgt, …) plus the Domain
/// Controllers OU, without the DC's RID bookkeeping. Test and benchmark fixtures of other
/// sessions live in OUs of their own and change concurrently on a shared lab DC, so they
/// are left out; tests check objects they plant in OUs themselves.
pub fn without_volatile(snapshot: BTreeMap<String, String>) -> BTreeMap<String, String> {
    snapshot
        .into_iter()
        .filter(|(dn, _)| {
            let dn = dn.to_ascii_lowercase();
            let bookkeeping = dn.starts_with("cn=rid set,") || dn.starts_with("cn=rid manager$,");
            let in_fixture_ou =
                dn.split(',').any(|rdn| rdn.trim().starts_with("ou=")) && !dn.contains("ou=domain controllers,");
            !bookkeeping && !in_fixture_ou
        })
        .collect()
}

/// What changed between two snapshots (`+` new, `~` modified, `-` gone).
pub fn snapshot_diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> String {
    let mut lines = Vec::new();
    for (dn, usn) in after {
        match before.get(dn) {
            None => lines.push(format!("+ {dn}")),
            Some(old) if old != usn => lines.push(format!("~ {dn} (uSNChanged {old} → {usn})")),
            _ => {}
        }
    }
    for dn in before.keys().filter(|dn| !after.contains_key(*dn)) {
        lines.push(format!("- {dn}"));
    }
    lines.join("\n")
}

impl Pipeline {
    /// Every group the planner knows (`gwbctl groups --json`, all pages).
    pub async fn all_groups(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut groups = Vec::new();
        let mut token = String::new();
        loop {
            let mut args = vec!["groups", "--page-size", "1000"];
            if !token.is_empty() {
                args.extend(["--page-token", token.as_str()]);
            }
            let page = self.gwbctl_json(&args).await?;
            groups.extend(page["groups"].as_array().cloned().unwrap_or_default());
            token = page["next_page_token"].as_str().unwrap_or_default().to_string();
            if token.is_empty() {
                return Ok(groups);
            }
        }
    }
}
