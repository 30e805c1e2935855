//! Runs the real product binaries (graph-sim, gwb-collector, gwb-planner, gwb-writer)
//! as separate processes against the real RabbitMQ and the lab AD DC, each run with
//! its own bus namespace, OUs and state files, so tests can run in parallel. The same
//! harness runs the benchmarks (crates/gwb-bench), with the knobs of [`Options`].
//!
//! No port is chosen ahead of time: every listener binds port 0 and the service reports
//! the address it bound in `<address dir>/<service>.<listener>.addr`
//! (`gwb_runtime::listen`, `--address-dir`; graph-sim's `--addr-file`), which the
//! harness waits for. The planner needs the collector's and the writer's control
//! endpoints in its configuration, so they start first. A restarted collector or writer
//! binds the addresses it had (the planner's configuration names them); a restarted
//! planner binds new ones, and [`Pipeline::control_endpoint`] follows.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use graph_sim::AdminClient;
use gwb_bus::BusConfig;

pub const TENANT_ID: &str = "6a1c3f0e-1111-4c4c-9d9d-0123456789ab";
pub const CLIENT_ID: &str = "b7f4e2d1-2222-4e4e-8f8f-0123456789ab";

/// How long a service may take to report the addresses it bound.
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Where `cargo build --workspace --bins` put the binaries (scripts/test.sh builds them).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    binary_in(&target_dir().join("debug"), name)
}

/// A binary in `dir` (e.g. `target/release` for the benchmarks); an error saying how to
/// build it when it is missing.
pub fn binary_in(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --workspace --bins`, done by scripts/test.sh; \
             `cargo build --release --workspace --bins` for release benchmarks)",
            path.display()
        );
    }
    Ok(path)
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Settings a test (or benchmark) may change before starting the pipeline.
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
    /// Extra `[writer]` TOML lines (e.g. `partitions = [0]`, `dry_run = true`).
    pub writer_toml: String,
    /// Extra `[directory]` TOML lines for the writer (e.g. `adopt_converted_groups = true`).
    pub directory_toml: String,
    /// Run with no other pipeline of this process at the same time (see [`alone`]).
    pub alone: bool,
    /// Where the binaries are (default `target/debug`, see [`binary`]); the benchmarks
    /// pass `target/release`.
    pub bin_dir: Option<PathBuf>,
    /// graph-sim's arguments besides listen address and credentials. Default: tiny pages
    /// (1–3 objects, an empty page every 4) that shake out paging bugs; the benchmarks
    /// use Graph's own paging (graph-sim's defaults).
    pub graph_sim_args: Vec<String>,
    /// `RUST_LOG` of every process (default `GWB_TEST_LOG`, or `info`).
    pub log_filter: String,
    /// LDAP URL the writer uses (default the lab's `GWB_LAB_LDAP_URL`); the benchmarks
    /// put a byte-counting proxy in between.
    pub ldap_url: Option<String>,
    /// Graph change notifications: the collector listens for them and subscribes, so
    /// a notification starts a round.
    pub notifications: bool,
    /// Start the collector only on [`Pipeline::start_collector`] (the benchmarks time
    /// from its first round). The planner then does not know the collector's control
    /// endpoint: no `gwbctl sync`, and `status` lists no live collector health.
    pub defer_collector: bool,
    /// How often [`Pipeline::eventually`] checks (default 100 ms).
    pub check_every: Duration,
    /// First part of the run's name: its directory under `$TMPDIR` and its bus
    /// namespace (default `gwbtest`).
    pub name: String,
    /// Keep the run's directory (configurations, logs, state) after [`Pipeline::stop`].
    pub keep_dir: bool,
    /// The lab DC the writer uses (default: the process environment's `GWB_LAB_*`).
    pub lab: Option<crate::ad::LabEnv>,
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
            writer_toml: String::new(),
            directory_toml: String::new(),
            alone: false,
            bin_dir: None,
            graph_sim_args: ["--max-objects-per-page", "3", "--min-objects-per-page", "1", "--empty-page-every", "4"]
                .map(String::from)
                .to_vec(),
            log_filter: std::env::var("GWB_TEST_LOG").unwrap_or_else(|_| "info".into()),
            ldap_url: None,
            notifications: false,
            defer_collector: false,
            check_every: Duration::from_millis(100),
            name: "gwbtest".into(),
            keep_dir: false,
            lab: None,
        }
    }
}

/// Which product service a process is (several writers may run).
#[derive(Clone, Debug)]
enum Kind {
    Collector,
    Planner,
    /// A writer with its id and extra `[writer]` lines.
    Writer {
        id: String,
        toml: String,
    },
}

impl Kind {
    fn binary(&self) -> &'static str {
        match self {
            Kind::Collector => "gwb-collector",
            Kind::Planner => "gwb-planner",
            Kind::Writer { .. } => "gwb-writer",
        }
    }

    fn listeners(&self, notifications: bool) -> Vec<&'static str> {
        match self {
            Kind::Collector if notifications => vec!["control", "metrics", "notifications"],
            _ => vec!["control", "metrics"],
        }
    }
}

/// One running process.
struct Service {
    name: String,
    /// A product service (`None`: graph-sim).
    kind: Option<Kind>,
    child: Child,
    /// Listener (`control`, `metrics`, `notifications`) → the address it bound.
    addresses: BTreeMap<String, SocketAddr>,
}

/// Files every service configuration refers to.
struct Files {
    client_secret: PathBuf,
    bind_password: PathBuf,
    client_state: PathBuf,
}

pub struct Pipeline {
    pub dir: PathBuf,
    pub sim: AdminClient,
    pub sim_url: String,
    pub bus: BusConfig,
    pub token_file: PathBuf,
    options: Options,
    files: Files,
    services: Vec<Service>,
    /// Forwards Graph's change notifications to the collector (see [`Relay`]).
    relay: Option<Relay>,
    _turn: Turn,
}

impl Pipeline {
    pub async fn start(options: Options) -> anyhow::Result<Pipeline> {
        let turn = if options.alone { alone().await } else { shared().await };
        let run = unique(&options.name);
        let dir = std::env::temp_dir().join(&run);
        std::fs::create_dir_all(&dir)?;
        let files = Files {
            client_secret: dir.join("client-secret"),
            bind_password: dir.join("bind-password"),
            client_state: dir.join("client-state"),
        };
        gwb_runtime::secret::write_secret_file(&files.client_secret, "sim-client-secret-value")?;
        let token_file = dir.join("control-token");
        gwb_runtime::secret::write_secret_file(&token_file, &uuid::Uuid::new_v4().to_string())?;
        let lab_password_file = lab_var(&options, "GWB_LAB_LDAP_PASSWORD_FILE")
            .context("GWB_LAB_LDAP_PASSWORD_FILE (run scripts/test.sh)")?;
        let password = std::fs::read_to_string(&lab_password_file)?;
        gwb_runtime::secret::write_secret_file(&files.bind_password, password.trim_end())?;
        gwb_runtime::secret::write_secret_file(&files.client_state, &uuid::Uuid::new_v4().simple().to_string())?;

        let bin_dir = options.bin_dir.clone().unwrap_or_else(|| target_dir().join("debug"));
        let addr_file = dir.join("graph-sim.addr");
        let mut sim = spawn(
            "graph-sim",
            &dir,
            &options.log_filter,
            Command::new(binary_in(&bin_dir, "graph-sim")?)
                .arg("--listen")
                .arg("127.0.0.1:0")
                .args(["--tenant-id", TENANT_ID, "--client-id", CLIENT_ID])
                .arg("--client-secret-file")
                .arg(&files.client_secret)
                .arg("--addr-file")
                .arg(&addr_file)
                .args(&options.graph_sim_args),
        )?;
        let sim_url = match wait_for_file(&addr_file, ADDRESS_TIMEOUT).await {
            Ok(url) => url,
            Err(error) => {
                let _ = sim.kill().await;
                bail!("{error:#}\n{}", tail(&dir, "graph-sim", 15));
            }
        };
        let relay = if options.notifications { Some(Relay::start(&dir).await?) } else { None };
        let mut pipeline = Pipeline {
            sim: AdminClient::new(sim_url.clone())?,
            sim_url,
            bus: BusConfig { namespace: run, command_partitions: 2, ..BusConfig::default() },
            token_file,
            files,
            services: vec![Service { name: "graph-sim".into(), kind: None, child: sim, addresses: BTreeMap::new() }],
            relay,
            options,
            dir,
            _turn: turn,
        };
        // The collector and the writer first: the planner's configuration names their
        // control endpoints.
        let writer = Kind::Writer { id: pipeline.bus.namespace.clone(), toml: pipeline.options.writer_toml.clone() };
        pipeline.launch("gwb-writer", writer, None)?;
        if !pipeline.options.defer_collector {
            pipeline.launch("gwb-collector", Kind::Collector, None)?;
            pipeline.await_addresses("gwb-collector").await?;
        }
        pipeline.await_addresses("gwb-writer").await?;
        pipeline.launch("gwb-planner", Kind::Planner, None)?;
        pipeline.await_addresses("gwb-planner").await?;
        pipeline
            .eventually("the planner's control API answers", Duration::from_secs(60), || async {
                let out = pipeline.gwbctl(&["status"]).await?;
                anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                Ok(())
            })
            .await?;
        Ok(pipeline)
    }

    /// Starts the collector of a pipeline started with [`Options::defer_collector`] and
    /// waits until it reports its addresses.
    pub async fn start_collector(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.index("gwb-collector").is_none(), "the collector runs already");
        self.launch("gwb-collector", Kind::Collector, None)?;
        self.await_addresses("gwb-collector").await
    }

    /// Starts another writer, `name` (e.g. `gwb-writer-2`), with extra `[writer]` lines
    /// (e.g. `partitions = [1]`), and waits until it reports its addresses. The planner
    /// does not know its control endpoint; its log is in [`Pipeline::log_tails`].
    pub async fn start_writer(&mut self, name: &str, writer_toml: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.index(name).is_none(), "{name} runs already");
        let kind = Kind::Writer { id: format!("{}-{name}", self.bus.namespace), toml: writer_toml.to_string() };
        self.launch(name, kind, None)?;
        self.await_addresses(name).await
    }

    /// Kills one service (SIGKILL: no clean shutdown) and starts it again with the same
    /// configuration and state. A collector or writer binds the addresses it had (the
    /// planner's configuration names them); the planner binds new ones.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self.index(name).with_context(|| format!("no service {name}"))?;
        let kind = self.services[index].kind.clone().with_context(|| format!("{name} cannot be restarted"))?;
        let service = &mut self.services[index];
        service.child.kill().await?;
        service.child.wait().await?;
        let previous_addresses = std::mem::take(&mut service.addresses);
        let _ = std::fs::remove_dir_all(self.address_dir(name));
        let previous = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        std::fs::write(self.dir.join(format!("{name}.previous.log")), previous)?;
        let keep = match kind {
            Kind::Planner => None,
            _ => Some(previous_addresses),
        };
        // The old addresses are free again once the killed process is gone, but another
        // socket may take one in between: try again a few times.
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.relaunch(index, kind.clone(), keep.clone())?;
            match self.await_addresses(name).await {
                Ok(()) => break,
                Err(error) if keep.is_some() && attempt < 5 && self.exited(name) => {
                    eprintln!("{name} did not start again on its old addresses (attempt {attempt}): {error:#}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error),
            }
        }
        if matches!(kind, Kind::Planner) {
            self.eventually("the restarted planner answers", Duration::from_secs(30), || async {
                let out = self.gwbctl(&["status"]).await?;
                anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// The planner's control endpoint (`http://ip:port`, for gwbctl); it changes when
    /// the planner is restarted.
    pub fn control_endpoint(&self) -> String {
        self.control_addr("gwb-planner").map(|addr| format!("http://{addr}")).unwrap_or_default()
    }

    /// Where a service's control API listens.
    pub fn control_addr(&self, name: &str) -> anyhow::Result<SocketAddr> {
        self.address(name, "control")
    }

    /// Where a service serves `/metrics`.
    pub fn metrics_addr(&self, name: &str) -> anyhow::Result<SocketAddr> {
        self.address(name, "metrics")
    }

    /// Every service's metrics address: (service, address).
    pub fn metrics_targets(&self) -> Vec<(String, SocketAddr)> {
        self.services.iter().filter_map(|s| s.addresses.get("metrics").map(|addr| (s.name.clone(), *addr))).collect()
    }

    /// The address a service reported for `listener`.
    pub fn address(&self, name: &str, listener: &str) -> anyhow::Result<SocketAddr> {
        let index = self.index(name).with_context(|| format!("no service {name}"))?;
        self.services[index]
            .addresses
            .get(listener)
            .copied()
            .with_context(|| format!("{name} has no {listener} address"))
    }

    /// A binary of this pipeline's binary directory ([`Options::bin_dir`]).
    pub fn binary(&self, name: &str) -> anyhow::Result<PathBuf> {
        binary_in(&self.options.bin_dir.clone().unwrap_or_else(|| target_dir().join("debug")), name)
    }

    /// Runs gwbctl against this pipeline's planner with its token.
    pub async fn gwbctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(self.binary("gwbctl")?)
            .arg("--endpoint")
            .arg(self.control_endpoint())
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

    /// gwbctl with `--json`, parsed; fails on a non-zero exit.
    pub async fn gwbctl_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.gwbctl(&all).await?;
        anyhow::ensure!(out.status.success(), "gwbctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
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

    /// Waits until `gwbctl group <id>` says the group is in `state`; its detail (JSON).
    pub async fn group_in_state(
        &self,
        group: uuid::Uuid,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let id = group.to_string();
        self.eventually(&format!("group {id} is {state}"), timeout, || async {
            let detail = self.gwbctl_json(&["group", &id]).await?;
            anyhow::ensure!(detail["summary"]["state"] == state, "{detail}");
            Ok(())
        })
        .await?;
        self.gwbctl_json(&["group", &id]).await
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
            tokio::time::sleep(self.options.check_every).await;
        }
    }

    /// The last lines of every service's log, for failure messages.
    pub fn log_tails(&self) -> String {
        self.services.iter().map(|s| tail(&self.dir, &s.name, 15)).collect()
    }

    /// Whole log of one service.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Stops every process and removes the bus namespace (and the run's directory unless
    /// [`Options::keep_dir`]).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(relay) = self.relay.take() {
            relay.task.abort();
        }
        for service in &mut self.services {
            if let Some(pid) = service.child.id() {
                // SIGTERM first: services shut down cleanly.
                let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
        }
        for service in &mut self.services {
            if tokio::time::timeout(Duration::from_secs(10), service.child.wait()).await.is_err() {
                let _ = service.child.kill().await;
                eprintln!("{} did not stop within 10 s of SIGTERM", service.name);
            }
        }
        gwb_bus::delete_topology(&self.bus).await?;
        if !self.options.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        Ok(())
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == name)
    }

    /// The directory a service instance reports its addresses in (one per instance:
    /// two writers both report as `gwb-writer`).
    fn address_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.addresses"))
    }

    fn exited(&mut self, name: &str) -> bool {
        self.index(name).is_some_and(|i| matches!(self.services[i].child.try_wait(), Ok(Some(_))))
    }

    /// Writes the configuration of a new service and starts it.
    fn launch(&mut self, name: &str, kind: Kind, keep: Option<BTreeMap<String, SocketAddr>>) -> anyhow::Result<()> {
        let child = self.spawn_service(name, &kind, keep.as_ref())?;
        self.services.push(Service { name: name.to_string(), kind: Some(kind), child, addresses: BTreeMap::new() });
        Ok(())
    }

    /// Writes the configuration of a stopped service again and starts it.
    fn relaunch(&mut self, index: usize, kind: Kind, keep: Option<BTreeMap<String, SocketAddr>>) -> anyhow::Result<()> {
        let name = self.services[index].name.clone();
        self.services[index].child = self.spawn_service(&name, &kind, keep.as_ref())?;
        Ok(())
    }

    fn spawn_service(
        &self,
        name: &str,
        kind: &Kind,
        keep: Option<&BTreeMap<String, SocketAddr>>,
    ) -> anyhow::Result<Child> {
        let listen = |listener: &str| {
            keep.and_then(|addresses| addresses.get(listener))
                .map(SocketAddr::to_string)
                .unwrap_or("127.0.0.1:0".into())
        };
        let text = match kind {
            Kind::Collector => self.collector_config(&listen("control"), &listen("notifications")),
            Kind::Planner => self.planner_config()?,
            Kind::Writer { id, toml } => self.writer_config(id, toml, &listen("control")),
        };
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(&config, format!("{text}\n[metrics]\nlisten = \"{}\"\n", listen("metrics")))?;
        let address_dir = self.address_dir(name);
        std::fs::create_dir_all(&address_dir)?;
        spawn(
            name,
            &self.dir,
            &self.options.log_filter,
            Command::new(self.binary(kind.binary())?)
                .arg("--config")
                .arg(&config)
                .arg("--address-dir")
                .arg(&address_dir),
        )
    }

    /// Waits until a service has reported every address it binds; fails with its log
    /// tail when it exits first or takes longer than [`ADDRESS_TIMEOUT`].
    async fn await_addresses(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self.index(name).with_context(|| format!("no service {name}"))?;
        let kind = self.services[index].kind.clone().with_context(|| format!("{name} reports no addresses"))?;
        let listeners = kind.listeners(self.options.notifications);
        let address_dir = self.address_dir(name);
        let start = Instant::now();
        let mut addresses = BTreeMap::new();
        loop {
            for listener in &listeners {
                if addresses.contains_key(*listener) {
                    continue;
                }
                let path = gwb_runtime::listen::address_file(&address_dir, kind.binary(), listener);
                if let Ok(text) = std::fs::read_to_string(&path)
                    && let Ok(addr) = text.trim().parse::<SocketAddr>()
                {
                    addresses.insert(listener.to_string(), addr);
                }
            }
            if addresses.len() == listeners.len() {
                self.services[index].addresses = addresses;
                return Ok(());
            }
            let missing: Vec<&str> = listeners.iter().copied().filter(|l| !addresses.contains_key(*l)).collect();
            if let Ok(Some(status)) = self.services[index].child.try_wait() {
                bail!(
                    "{name} exited ({status}) before reporting its {missing:?} addresses in {}\n{}",
                    address_dir.display(),
                    tail(&self.dir, name, 30)
                );
            }
            if start.elapsed() > ADDRESS_TIMEOUT {
                bail!(
                    "{name} did not report its {missing:?} addresses in {} within {ADDRESS_TIMEOUT:?} \
                     (does it take --address-dir?)\n{}",
                    address_dir.display(),
                    tail(&self.dir, name, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn bus_toml(&self) -> String {
        format!("[bus]\nnamespace = \"{}\"\ncommand_partitions = {}\n", self.bus.namespace, self.bus.command_partitions)
    }

    fn collector_config(&self, control: &str, notifications: &str) -> String {
        let o = &self.options;
        let sim_url = &self.sim_url;
        let notifications = match &self.relay {
            Some(relay) => format!(
                "[collector.notifications]\nlisten = \"{notifications}\"\npublic_url = \"http://{}\"\nclient_state_file = \"{}\"\n\n",
                relay.addr,
                self.files.client_state.display()
            ),
            None => String::new(),
        };
        format!(
            "[graph]\nlogin_endpoint = \"{sim_url}\"\ngraph_endpoint = \"{sim_url}\"\nscope = \"https://graph.microsoft.com/.default\"\n\
             tenant_id = \"{TENANT_ID}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\napi_version = \"beta\"\n\
             max_backoff_seconds = 2\n{}\n\n[collector]\npoll_interval_seconds = {}\nstate_path = \"{}\"\n\n\
             [collector.control]\nlisten = \"{control}\"\ntoken_file = \"{}\"\n\n{notifications}{}",
            self.files.client_secret.display(),
            o.collector_graph_toml,
            o.poll_interval_seconds,
            self.dir.join("collector.db").display(),
            self.token_file.display(),
            self.bus_toml(),
        )
    }

    /// The planner's configuration, naming the collector's and the first writer's
    /// control endpoints as they reported them. Always port 0.
    fn planner_config(&self) -> anyhow::Result<String> {
        let o = &self.options;
        let collector = match self.control_addr("gwb-collector") {
            Ok(addr) => format!("collector_endpoint = \"http://{addr}\"\n"),
            Err(_) if o.defer_collector => String::new(),
            Err(error) => return Err(error),
        };
        let writer = self.control_addr("gwb-writer")?;
        Ok(format!(
            "[planner]\nstate_path = \"{}\"\ndefault_ou = \"{}\"\n{}{}\n\n[planner.control]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\n\
             [scope]\n{}\n\n[coordination]\n{collector}writer_endpoints = [\"http://{writer}\"]\ntoken_file = \"{}\"\n\n{}\n\n{}",
            self.dir.join("planner.db").display(),
            o.target_ou,
            o.retired_ou.as_ref().map(|ou| format!("retired_ou = \"{ou}\"\n")).unwrap_or_default(),
            o.planner_toml,
            self.token_file.display(),
            o.scope_toml,
            self.token_file.display(),
            o.planner_sections,
            self.bus_toml(),
        ))
    }

    fn writer_config(&self, id: &str, writer_toml: &str, control: &str) -> String {
        let o = &self.options;
        let ldap_url = o.ldap_url.clone().or_else(|| lab_var(o, "GWB_LAB_LDAP_URL")).unwrap_or_default();
        let ca_file = match &o.writer_ca_file {
            Some(path) => path.display().to_string(),
            None => lab_var(o, "GWB_LAB_LDAP_CA_FILE").unwrap_or_default(),
        };
        let bind_dn = lab_var(o, "GWB_LAB_LDAP_BIND_DN").unwrap_or_default();
        format!(
            "[directory]\nurl = \"{ldap_url}\"\nca_file = \"{ca_file}\"\nbind_dn = \"{bind_dn}\"\nbind_password_file = \"{}\"\nmanaged_ous = [{}]\n{}\n\n\
             [writer]\nid = \"{id}\"\nstatus_interval_seconds = 2\n{writer_toml}\n\n\
             [writer.control]\nlisten = \"{control}\"\ntoken_file = \"{}\"\n\n{}",
            self.files.bind_password.display(),
            std::iter::once(&o.target_ou)
                .chain(o.retired_ou.as_ref())
                .map(|ou| format!("\"{ou}\""))
                .collect::<Vec<_>>()
                .join(", "),
            o.directory_toml,
            self.token_file.display(),
            self.bus_toml(),
        )
    }
}

/// Forwards Graph's change notifications to the collector. The collector's
/// `[collector.notifications] public_url` must be known before it starts, but its
/// listener binds port 0; so the public URL is this relay's (bound here, in the test
/// process), and each connection is forwarded to the address the collector reported.
struct Relay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(dir: &Path) -> anyhow::Result<Relay> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let target =
            gwb_runtime::listen::address_file(&dir.join("gwb-collector.addresses"), "gwb-collector", "notifications");
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(text) = wait_for_file(&target, Duration::from_secs(10)).await else { return };
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(text.as_str()).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Ok(Relay { addr, task })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
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

/// A lab setting: from [`Options::lab`] when given, else the process environment.
fn lab_var(options: &Options, name: &str) -> Option<String> {
    match &options.lab {
        Some(lab) => lab.get(name).ok().map(str::to_string),
        None => std::env::var(name).ok(),
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

fn spawn(name: &str, dir: &Path, log_filter: &str, command: &mut Command) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    without_gwb_env(command)
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("RUST_LOG", log_filter)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

/// The last `lines` lines of a service's log, headed by its name.
fn tail(dir: &Path, name: &str, lines: usize) -> String {
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    format!("--- {name} log (tail) ---\n{}\n", all[all.len().saturating_sub(lines)..].join("\n"))
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// Process figures and metrics (reliability tests, benchmarks).
// ---------------------------------------------------------------------------------

/// CPU time and memory of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    pub rss_mb: f64,
}

impl ProcStats {
    /// From `/proc/<pid>/stat` (utime + stime) and `/proc/<pid>/status` (VmHWM, VmRSS).
    pub fn read(pid: u32) -> anyhow::Result<ProcStats> {
        let cpu_seconds = cpu_seconds(pid).with_context(|| format!("no CPU time for process {pid}"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_default()
        };
        Ok(ProcStats { cpu_seconds, peak_rss_mb: kb("VmHWM:") / 1024.0, rss_mb: kb("VmRSS:") / 1024.0 })
    }
}

impl Pipeline {
    /// Process id of a running service (`graph-sim`, `gwb-planner`, `gwb-writer`, `gwb-collector`).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.services.iter().find(|s| s.name == name).and_then(|s| s.child.id())
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

    /// CPU seconds and memory of each running process (graph-sim included).
    pub fn process_stats(&self) -> Vec<(String, ProcStats)> {
        self.services
            .iter()
            .filter_map(|s| s.child.id().and_then(|pid| ProcStats::read(pid).ok()).map(|stats| (s.name.clone(), stats)))
            .collect()
    }

    /// The service's `/metrics` text (a plain HTTP/1.0 GET on its metrics address).
    pub async fn scrape(&self, name: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.metrics_addr(name)?;
        let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
        stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response)).await??;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or(("", &response));
        anyhow::ensure!(head.is_empty() || head.contains(" 200 "), "{name} /metrics: {head}");
        Ok(body.to_string())
    }

    /// Log of a service including what it wrote before its last restart.
    pub fn full_log(&self, name: &str) -> String {
        let previous = std::fs::read_to_string(self.dir.join(format!("{name}.previous.log"))).unwrap_or_default();
        format!("{previous}{}", self.log(name))
    }

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
