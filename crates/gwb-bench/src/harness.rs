//! Runs the real binaries (graph-sim, planner, writer, collector) the way
//! `tests/src/pipeline.rs` does, with what benchmarks need on top: a chosen binary
//! directory (release for full runs), realistic Graph paging, a metrics endpoint per
//! service, the collector started separately (so timing can start at its first poll),
//! a dry-run writer and an LDAP URL through the byte-counting proxy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use graph_sim::AdminClient;
use gwb_bus::BusConfig;
use gwb_tests::pipeline::{CLIENT_ID, TENANT_ID, free_port, unique, wait_for_file, without_gwb_env};
use tokio::process::{Child, Command};

use crate::ldap::Lab;

pub struct Options {
    pub bin_dir: PathBuf,
    pub target_ou: String,
    pub poll_interval_seconds: f64,
    pub dry_run: bool,
    /// LDAP URL the writer uses (the proxy's), default the lab's.
    pub ldap_url: Option<String>,
    pub log_filter: String,
    /// Let graph-sim's change notifications trigger rounds (the collector subscribes).
    pub webhook: bool,
}

pub struct Services {
    pub dir: PathBuf,
    pub sim: AdminClient,
    pub bus: BusConfig,
    options: Options,
    control_endpoint: String,
    token_file: PathBuf,
    pub metrics_ports: Vec<(String, u16)>,
    children: Vec<(String, Child)>,
    http: reqwest::Client,
}

impl Services {
    /// Starts graph-sim, the planner and the writer; the collector waits for
    /// [`Services::start_collector`].
    pub async fn start(lab: &Lab, options: Options) -> anyhow::Result<Services> {
        let dir = std::env::temp_dir().join(unique("gwb-bench"));
        std::fs::create_dir_all(&dir)?;
        let secret_file = dir.join("client-secret");
        gwb_runtime::secret::write_secret_file(&secret_file, "sim-client-secret-value")?;
        let token_file = dir.join("control-token");
        gwb_runtime::secret::write_secret_file(&token_file, &uuid::Uuid::new_v4().to_string())?;
        let password_file = dir.join("bind-password");
        gwb_runtime::secret::write_secret_file(&password_file, &lab.password)?;

        let mut children = Vec::new();
        let addr_file = dir.join("graph-sim.addr");
        // Graph's own paging (graph-sim defaults: 50–100 objects a page, 500-member
        // slices), not the tiny pages the end-to-end tests use to shake out paging bugs.
        let sim = spawn(
            "graph-sim",
            &dir,
            &options.log_filter,
            Command::new(options.bin_dir.join("graph-sim"))
                .args(["--listen", "127.0.0.1:0", "--tenant-id", TENANT_ID, "--client-id", CLIENT_ID])
                .arg("--client-secret-file")
                .arg(&secret_file)
                .arg("--addr-file")
                .arg(&addr_file)
                .args(["--log", "warn"]),
        )?;
        children.push(("graph-sim".to_string(), sim));
        let sim_url = wait_for_file(&addr_file, Duration::from_secs(20)).await?;
        let sim_admin = AdminClient::new(sim_url.clone())?;

        let namespace = unique("gwbbench");
        // One partition per core of the bench machine (2): the writer applies partitions
        // in parallel.
        let bus = BusConfig { namespace: namespace.clone(), command_partitions: 2, ..BusConfig::default() };
        let bus_toml = format!("[bus]\nnamespace = \"{namespace}\"\ncommand_partitions = 2\n");
        let control_port = free_port()?;
        let writer_port = free_port()?;
        let collector_port = free_port()?;
        let mut metrics_ports = Vec::new();
        for name in ["gwb-collector", "gwb-planner", "gwb-writer"] {
            metrics_ports.push((name.to_string(), free_port()?));
        }
        let metrics = |name: &str| {
            let port = metrics_ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p).unwrap_or_default();
            format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")
        };
        let notifications = if options.webhook {
            let port = free_port()?;
            let client_state = dir.join("client-state");
            gwb_runtime::secret::write_secret_file(&client_state, &uuid::Uuid::new_v4().simple().to_string())?;
            format!(
                "[collector.notifications]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nclient_state_file = \"{}\"\n",
                client_state.display()
            )
        } else {
            String::new()
        };
        let collector = format!(
            "[graph]\nlogin_endpoint = \"{sim_url}\"\ngraph_endpoint = \"{sim_url}\"\nscope = \"https://graph.microsoft.com/.default\"\n\
             tenant_id = \"{TENANT_ID}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\napi_version = \"beta\"\n\
             max_backoff_seconds = 2\n\n[collector]\npoll_interval_seconds = {}\nstate_path = \"{}\"\n\n\
             [collector.control]\nlisten = \"127.0.0.1:{collector_port}\"\ntoken_file = \"{}\"\n\n{}\n{}\n{bus_toml}",
            secret_file.display(),
            options.poll_interval_seconds,
            dir.join("collector.db").display(),
            token_file.display(),
            notifications,
            metrics("gwb-collector"),
        );
        let planner = format!(
            "[planner]\nstate_path = \"{}\"\ndefault_ou = \"{}\"\n\n[scope]\nsecurity_groups = true\n\n[control]\nlisten = \"127.0.0.1:{control_port}\"\ntoken_file = \"{}\"\n\n\
             [coordination]\ncollector_endpoint = \"http://127.0.0.1:{collector_port}\"\nwriter_endpoints = [\"http://127.0.0.1:{writer_port}\"]\ntoken_file = \"{}\"\n\n\
             [deletion]\nmax_groups = 1000000\nmax_percent = 100\n\n{}\n{bus_toml}",
            dir.join("planner.db").display(),
            options.target_ou,
            token_file.display(),
            token_file.display(),
            metrics("gwb-planner"),
        );
        let writer = format!(
            "[directory]\nurl = \"{}\"\nca_file = \"{}\"\nbind_dn = \"{}\"\nbind_password_file = \"{}\"\nmanaged_ous = [\"{}\"]\n\n\
             [writer]\nid = \"{namespace}\"\ndry_run = {}\nstatus_interval_seconds = 2\ncontrol_listen = \"127.0.0.1:{writer_port}\"\ncontrol_token_file = \"{}\"\n\n{}\n{bus_toml}",
            options.ldap_url.as_deref().unwrap_or(&lab.url),
            lab.ca_file.display(),
            lab.bind_dn,
            password_file.display(),
            options.target_ou,
            options.dry_run,
            token_file.display(),
            metrics("gwb-writer"),
        );
        for (name, text) in [("gwb-planner", planner), ("gwb-writer", writer), ("gwb-collector", collector)] {
            std::fs::write(dir.join(format!("{name}.toml")), text)?;
        }
        let mut services = Services {
            dir,
            sim: sim_admin,
            bus,
            control_endpoint: format!("http://127.0.0.1:{control_port}"),
            token_file,
            metrics_ports,
            children,
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            options,
        };
        for name in ["gwb-planner", "gwb-writer"] {
            services.spawn_service(name)?;
        }
        services
            .eventually("the planner's control API answers", Duration::from_secs(60), || async {
                services.gwbctl_json(&["status"]).await.map(|_| ())
            })
            .await?;
        Ok(services)
    }

    fn spawn_service(&mut self, name: &str) -> anyhow::Result<()> {
        let child = spawn(
            name,
            &self.dir,
            &self.options.log_filter,
            Command::new(self.options.bin_dir.join(name)).arg("--config").arg(self.dir.join(format!("{name}.toml"))),
        )?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    pub fn start_collector(&mut self) -> anyhow::Result<()> {
        self.spawn_service("gwb-collector")
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children.iter().find(|(n, _)| n == name).and_then(|(_, c)| c.id())
    }

    pub async fn gwbctl_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(self.options.bin_dir.join("gwbctl"))
            .arg("--endpoint")
            .arg(&self.control_endpoint)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--json")
            .args(args)
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "gwbctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `gwbctl status`: (memberships known, commands in flight, groups written).
    pub async fn status(&self) -> anyhow::Result<Status> {
        let v = self.gwbctl_json(&["status"]).await?;
        Ok(Status {
            memberships_known: v["memberships_known"].as_u64().unwrap_or_default(),
            users_known: v["users_known"].as_u64().unwrap_or_default(),
            commands_in_flight: v["commands_in_flight"].as_u64().unwrap_or_default(),
            written: v["groups_by_state"]["written"].as_u64().unwrap_or_default(),
        })
    }

    /// The service's Prometheus text.
    pub async fn metrics(&self, name: &str) -> anyhow::Result<String> {
        let port = self
            .metrics_ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .with_context(|| format!("no service {name}"))?;
        Ok(self.http.get(format!("http://127.0.0.1:{port}/metrics")).send().await?.error_for_status()?.text().await?)
    }

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
                bail!("timed out after {timeout:?} waiting until {what}: {error:#}\n{}", self.log_tails());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tails(&self) -> String {
        let mut text = String::new();
        for (name, _) in &self.children {
            let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            text.push_str(&format!(
                "--- {name} log (tail) ---\n{}\n",
                lines[lines.len().saturating_sub(10)..].join("\n")
            ));
        }
        text
    }

    /// CPU seconds (user + system) and peak RSS of each running service.
    pub fn process_stats(&self) -> Vec<(String, ProcStats)> {
        self.children
            .iter()
            .filter_map(|(name, child)| child.id().and_then(|pid| ProcStats::read(pid).ok()).map(|s| (name.clone(), s)))
            .collect()
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        for (_, child) in &mut self.children {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
        }
        for (_, child) in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        gwb_bus::delete_topology(&self.bus).await?;
        if std::env::var_os("GWB_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Status {
    pub memberships_known: u64,
    pub users_known: u64,
    pub commands_in_flight: u64,
    pub written: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    pub rss_mb: f64,
}

impl ProcStats {
    pub fn read(pid: u32) -> anyhow::Result<ProcStats> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the `(comm)`, which may contain spaces: utime and stime are the
        // 14th and 15th fields overall, i.e. the 12th and 13th after the `)`.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or_default();
        // USER_HZ is 100 on every Linux build this runs on (it is fixed by the ABI).
        let cpu_seconds = (ticks(11) + ticks(12)) / 100.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_default()
        };
        Ok(ProcStats { cpu_seconds, peak_rss_mb: kb("VmHWM:") / 1024.0, rss_mb: kb("VmRSS:") / 1024.0 })
    }
}

/// Sum of every sample of `name` whose labels contain all `labels` (`key="value"`).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            if metric != name || !labels.iter().all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\""))) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

fn spawn(name: &str, dir: &Path, filter: &str, command: &mut Command) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    without_gwb_env(command)
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("RUST_LOG", filter)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name} (built? expected in the binary directory)"))
}
