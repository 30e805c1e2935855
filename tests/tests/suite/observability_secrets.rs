//! No secret ever reaches logs or error messages. The real binaries run with secret
//! files holding recognizable canaries, debug-level JSON logs, and are made to fail
//! where errors get printed: a broker URL carrying a password that cannot connect, a
//! wrong client secret against graph-sim, a bind password against an unreachable
//! LDAPS server, a running planner with a control token. Their whole stdout and stderr
//! must not contain any canary.
//!
//! Needs the binaries (`cargo build --workspace --bins`) and RabbitMQ at 127.0.0.1:5672.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use gwb_runtime::secret::write_secret_file;
use gwb_tests::pipeline::{binary, unique};
use tokio::process::Command;

const GRAPH_CANARY: &str = "CANARY-graph-client-secret-7f3a";
const BIND_CANARY: &str = "CANARY-ad-bind-password-91c2";
const TOKEN_CANARY: &str = "CANARY-control-token-5d8e";
const BUS_CANARY: &str = "CANARY-amqp-password-2b6f";
const CANARIES: &[&str] = &[GRAPH_CANARY, BIND_CANARY, TOKEN_CANARY, BUS_CANARY];

struct Lab {
    dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn new() -> Lab {
        let dir = std::env::temp_dir().join(unique("gwb-secrets"));
        std::fs::create_dir_all(&dir).unwrap();
        write_secret_file(&dir.join("graph-secret"), GRAPH_CANARY).unwrap();
        write_secret_file(&dir.join("bind-password"), BIND_CANARY).unwrap();
        write_secret_file(&dir.join("control-token"), TOKEN_CANARY).unwrap();
        write_secret_file(&dir.join("sim-secret"), "the-real-secret").unwrap();
        std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        Lab { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// Runs `program --config config` until it exits or `run_for` passes (then SIGTERM),
/// returning everything it printed.
async fn run(program: &Path, config: &Path, run_for: Duration) -> String {
    let child = gwb_tests::pipeline::without_gwb_env(&mut Command::new(program))
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let output = async move { child.wait_with_output().await.unwrap() };
    tokio::pin!(output);
    let output = tokio::select! {
        output = &mut output => output,
        _ = tokio::time::sleep(run_for) => {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            tokio::time::timeout(Duration::from_secs(10), output).await.expect("stops on SIGTERM")
        }
    };
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn assert_clean(what: &str, output: &str) {
    assert!(!output.trim().is_empty(), "{what} printed nothing; the test would prove nothing");
    for canary in CANARIES {
        assert!(!output.contains(canary), "{what} printed a secret ({canary}):\n{output}");
    }
}

const LOG: &str = "[log]\nformat = \"json\"\nfilter = \"debug\"\n";

#[tokio::test]
async fn secrets_never_appear_in_logs_or_errors() {
    // The services connect to RabbitMQ: not while a test that runs alone stops it.
    let _turn = gwb_tests::pipeline::shared().await;
    let lab = Lab::new();
    let namespace = unique("gwbtest-secrets");
    let bad_bus = format!("[bus]\nurl = \"amqp://gwb:{BUS_CANARY}@127.0.0.1:1/%2f\"\nnamespace = \"{namespace}\"\n");
    let good_bus = format!("[bus]\nnamespace = \"{namespace}\"\n");

    // graph-sim expects another client secret: the collector's token requests fail.
    let sim_addr_file = lab.path("sim.addr");
    let mut sim = Command::new(binary("graph-sim").unwrap())
        .args(["--listen", "127.0.0.1:0", "--tenant-id", "t1", "--client-id", "c1", "--client-secret-file"])
        .arg(lab.path("sim-secret"))
        .arg("--addr-file")
        .arg(&sim_addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut sim_url = String::new();
    for _ in 0..100 {
        sim_url = std::fs::read_to_string(&sim_addr_file).unwrap_or_default().trim().to_string();
        if !sim_url.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!sim_url.is_empty(), "graph-sim started");

    let graph = format!(
        "[graph]\nlogin_endpoint = \"{sim_url}\"\ngraph_endpoint = \"{sim_url}\"\nscope = \"https://graph.microsoft.com/.default\"\n\
         tenant_id = \"t1\"\nclient_id = \"c1\"\nclient_secret_file = \"{}\"\nmax_retries = 1\nmax_backoff_seconds = 1\n\
         [collector]\npoll_interval_seconds = 0.5\nstate_path = \"{}\"\n\
         [collector.control]\nlisten = \"127.0.0.1:0\"\n",
        lab.path("graph-secret").display(),
        lab.path("collector.db").display()
    );
    let collector = binary("gwb-collector").unwrap();
    let out = run(&collector, &lab.config("c1.toml", &format!("{graph}{bad_bus}{LOG}")), Duration::from_secs(20)).await;
    assert!(out.contains("127.0.0.1:1"), "the broker error is reported: {out}");
    assert_clean("gwb-collector with an unreachable broker", &out);
    let out = run(&collector, &lab.config("c2.toml", &format!("{graph}{good_bus}{LOG}")), Duration::from_secs(4)).await;
    assert!(
        out.to_lowercase().contains("round failed") || out.contains("401") || out.contains("invalid_client"),
        "{out}"
    );
    assert_clean("gwb-collector with a wrong client secret", &out);

    let planner_section = format!(
        "[planner]\nstate_path = \"{}\"\ndefault_ou = \"OU=Cloud Groups,DC=lab,DC=example\"\n[planner.control]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        lab.path("planner.db").display(),
        lab.path("control-token").display()
    );
    let planner = binary("gwb-planner").unwrap();
    let out =
        run(&planner, &lab.config("p1.toml", &format!("{planner_section}{bad_bus}{LOG}")), Duration::from_secs(20))
            .await;
    assert_clean("gwb-planner with an unreachable broker", &out);
    let out =
        run(&planner, &lab.config("p2.toml", &format!("{planner_section}{good_bus}{LOG}")), Duration::from_secs(3))
            .await;
    assert_clean("gwb-planner running", &out);

    let directory = format!(
        "[directory]\nurl = \"ldaps://127.0.0.1:1\"\nca_file = \"{}\"\nbind_dn = \"CN=svc,DC=lab,DC=example\"\n\
         bind_password_file = \"{}\"\nmanaged_ous = [\"OU=Cloud Groups,DC=lab,DC=example\"]\noperation_timeout_seconds = 2\n\
         [writer.control]\nlisten = \"127.0.0.1:0\"\n",
        lab.path("ca.pem").display(),
        lab.path("bind-password").display()
    );
    let writer = binary("gwb-writer").unwrap();
    let out =
        run(&writer, &lab.config("w1.toml", &format!("{directory}{bad_bus}{LOG}")), Duration::from_secs(20)).await;
    assert_clean("gwb-writer with an unreachable broker", &out);
    let out =
        run(&writer, &lab.config("w2.toml", &format!("{directory}{good_bus}{LOG}")), Duration::from_secs(5)).await;
    assert_clean("gwb-writer with an unreachable directory", &out);

    let _ = sim.kill().await;
    let _ = gwb_bus::delete_topology(&gwb_bus::BusConfig { namespace, ..Default::default() }).await;
}
