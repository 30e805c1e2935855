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
    /// Run with no other pipeline of this process at the same time (see [`alone`]).
    pub alone: bool,
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
            alone: false,
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
    _turn: Turn,
}

impl Pipeline {
    pub async fn start(options: Options) -> anyhow::Result<Pipeline> {
        let turn = if options.alone { alone().await } else { shared().await };
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
        let pipeline = Pipeline {
            dir,
            sim: sim_admin,
            sim_url,
            bus,
            control_endpoint,
            token_file,
            metrics,
            children,
            _turn: turn,
        };
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

    /// gwbctl that must succeed; its stdout.
    pub async fn gwbctl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.gwbctl(args).await?;
        anyhow::ensure!(
            out.status.success(),
            "gwbctl {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A synced user in the tenant with this on-premises SID; its id.
    pub async fn synced_user(&self, sid: &str) -> anyhow::Result<uuid::Uuid> {
        let fields = graph_sim::UserFields {
            display_name: Some(unique("user")),
            on_premises_security_identifier: Some(sid.into()),
            on_premises_sync_enabled: Some(true),
            ..graph_sim::UserFields::default()
        };
        Ok(self.sim.create_user(&graph_sim::NewUser { id: None, fields }).await?.user.id)
    }

    /// A security group in the tenant with these members; its id.
    pub async fn security_group(&self, name: &str, members: Vec<uuid::Uuid>) -> anyhow::Result<uuid::Uuid> {
        let fields = crate::workload::security_fields(name);
        Ok(self.sim.create_group(&graph_sim::NewGroup { id: None, fields, members }).await?.group.id)
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

/// Tests of one binary run in parallel threads. The few that must run alone (the
/// broker-restart case stops RabbitMQ for everyone; the load case measures lag and
/// rates) take this lock exclusively; every other test that runs services takes it
/// shared (a [`Pipeline`] holds its turn until it stops).
static TURNS: std::sync::LazyLock<std::sync::Arc<tokio::sync::RwLock<()>>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(tokio::sync::RwLock::new(())));

/// A test's turn to use RabbitMQ and the lab: shared with other tests, or alone.
pub enum Turn {
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    Alone(tokio::sync::OwnedRwLockWriteGuard<()>),
}

/// Waits until no test that must run alone is running (fair: a waiting one goes first).
pub async fn shared() -> Turn {
    Turn::Shared(TURNS.clone().read_owned().await)
}

/// [`shared`] for a test without a runtime (it blocks the thread).
pub fn shared_blocking() -> Turn {
    futures::executor::block_on(shared())
}

/// Waits until no other test of this process runs services, and keeps them out.
pub async fn alone() -> Turn {
    Turn::Alone(TURNS.clone().write_owned().await)
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
