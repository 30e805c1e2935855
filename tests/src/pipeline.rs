//! Runs the real product binaries (graph-sim, gwb-collector, gwb-planner, gwb-writer)
//! as separate processes against the real RabbitMQ and the lab AD DC, each test with
//! its own bus namespace, OUs, state files and ports so tests can run in parallel.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use gwb_bus::BusConfig;
use graph_sim::AdminClient;

pub const TENANT_ID: &str = "6a1c3f0e-1111-4c4c-9d9d-0123456789ab";
pub const CLIENT_ID: &str = "b7f4e2d1-2222-4e4e-8f8f-0123456789ab";

/// Where `cargo build --workspace --bins` put the binaries (scripts/test.sh builds them).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug").join(name);
    if !path.exists() {
        bail!("{} is missing: build the binaries first (`cargo build --workspace --bins`, done by scripts/test.sh)", path.display());
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
        let lab_password_file = std::env::var("GWB_LAB_LDAP_PASSWORD_FILE").context("GWB_LAB_LDAP_PASSWORD_FILE (run scripts/test.sh)")?;
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
        let ca_file = std::env::var("GWB_LAB_LDAP_CA_FILE")?;
        let bind_dn = std::env::var("GWB_LAB_LDAP_BIND_DN")?;
        let bus_toml = format!("[bus]\nnamespace = \"{namespace}\"\ncommand_partitions = 2\n");

        let collector = format!(
            "[graph]\nlogin_endpoint = \"{sim_url}\"\ngraph_endpoint = \"{sim_url}\"\nscope = \"https://graph.microsoft.com/.default\"\n\
             tenant_id = \"{TENANT_ID}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\napi_version = \"beta\"\n\
             max_backoff_seconds = 2\n\n[collector]\npoll_interval_seconds = {}\nstate_path = \"{}\"\n\n\
             [collector.control]\nlisten = \"127.0.0.1:{collector_port}\"\ntoken_file = \"{}\"\n\n{bus_toml}",
            secret_file.display(),
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
             [writer]\nid = \"{namespace}\"\nstatus_interval_seconds = 2\ncontrol_listen = \"127.0.0.1:{writer_port}\"\ncontrol_token_file = \"{}\"\n\n{bus_toml}",
            password_file.display(),
            std::iter::once(&options.target_ou).chain(options.retired_ou.as_ref()).map(|ou| format!("\"{ou}\"")).collect::<Vec<_>>().join(", "),
            token_file.display(),
        );
        for (name, text) in [("gwb-planner", planner), ("gwb-writer", writer), ("gwb-collector", collector)] {
            std::fs::write(dir.join(format!("{name}.toml")), text)?;
            children.push((name.to_string(), spawn_service(name, &dir)?));
        }
        let pipeline = Pipeline { dir, sim: sim_admin, sim_url, bus, control_endpoint, token_file, children };
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

fn spawn_service(name: &str, dir: &Path) -> anyhow::Result<Child> {
    spawn(name, dir, Command::new(binary(name)?).arg("--config").arg(dir.join(format!("{name}.toml"))))
}

fn spawn(name: &str, dir: &Path, command: &mut Command) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    // Services read `GWB_*` variables as configuration overrides; the test's own
    // (`GWB_LAB_*`) must not leak into them.
    for (key, _) in std::env::vars() {
        if key.starts_with("GWB_") {
            command.env_remove(key);
        }
    }
    command
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("RUST_LOG", std::env::var("GWB_TEST_LOG").unwrap_or_else(|_| "info".into()))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

async fn wait_for_file(path: &Path, timeout: Duration) -> anyhow::Result<String> {
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

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
