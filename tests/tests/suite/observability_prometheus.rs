//! A real Prometheus (Debian package, installed by scripts/ensure-prometheus.sh) with
//! its own config, data dir and port scrapes gwb metrics servers; its HTTP API then
//! answers the key series, loads deploy/prometheus/alerts.yml, evaluates the alerts,
//! and accepts every expression of the Grafana dashboard.
//!
//! The scraped targets are `gwb_runtime::metrics` servers started in this test with
//! sample values, one per service name. To scrape the real binaries instead, start
//! them with `[metrics] listen` and put their addresses in `targets` (one line).
//!
//! Without Prometheus and without root to install it, the test fails; set
//! GWB_SKIP_PROMETHEUS=1 to skip it on such machines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gwb_runtime::metrics::{Metrics, serve};
use gwb_runtime::shutdown::{self, Shutdown};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `prometheus` on PATH, installed when missing; `None` when skipping is allowed.
pub fn ensure_prometheus() -> Option<PathBuf> {
    let output = std::process::Command::new(repo().join("scripts/ensure-prometheus.sh")).output();
    match output {
        Ok(out) if out.status.success() => Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())),
        other => {
            let reason = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            if std::env::var_os("GWB_SKIP_PROMETHEUS").is_some() {
                eprintln!("skipping: no Prometheus ({reason})");
                return None;
            }
            panic!("Prometheus is needed (scripts/ensure-prometheus.sh failed: {reason}); GWB_SKIP_PROMETHEUS=1 skips");
        }
    }
}

/// One scrape target: the Prometheus job name and the `host:port` serving /metrics.
pub struct Target {
    pub job: &'static str,
    pub addr: SocketAddr,
}

/// A private Prometheus instance, killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Prometheus {
    pub async fn start(binary: &Path, targets: &[Target]) -> anyhow::Result<Prometheus> {
        let dir = TempDir(std::env::temp_dir().join(format!("gwb-prometheus-{}", uuid::Uuid::new_v4().simple())));
        std::fs::create_dir_all(dir.0.join("data"))?;
        std::fs::copy(repo().join("deploy/prometheus/alerts.yml"), dir.0.join("alerts.yml"))?;
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\nscrape_configs:\n",
        );
        for target in targets {
            config.push_str(&format!(
                "  - job_name: {}\n    static_configs:\n      - targets: [\"{}\"]\n",
                target.job, target.addr
            ));
        }
        std::fs::write(dir.0.join("prometheus.yml"), config)?;
        // Port 0: Prometheus binds what the kernel gives it and logs the address
        // (`msg="Listening on" address=127.0.0.1:43527`, from its web toolkit).
        let log_path = dir.0.join("prometheus.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(binary)
            .arg(format!("--config.file={}", dir.0.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting prometheus")?;
        let started = Instant::now();
        let addr = loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(addr) = listening_address(&text) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("prometheus exited ({status}) before listening: {text}");
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("prometheus did not log the address it listens on within 30s: {text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let prometheus = Prometheus { child, addr, _dir: dir };
        while http_get(addr, "/-/ready").await.map(|(status, _)| status != 200).unwrap_or(true) {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("prometheus not ready after 30s: {}", prometheus.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(prometheus)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>?query=<expr>`; the `data` member of a successful answer.
    pub async fn api(&self, path: &str, expr: Option<&str>) -> anyhow::Result<Value> {
        let uri = match expr {
            Some(expr) => format!("/api/v1/{path}?query={}", percent_encode(expr)),
            None => format!("/api/v1/{path}"),
        };
        let (status, body) = http_get(self.addr, &uri).await?;
        let json: Value = serde_json::from_str(&body).with_context(|| format!("{uri}: {status} {body}"))?;
        if json["status"] != "success" {
            bail!("{uri}: {json}");
        }
        Ok(json["data"].clone())
    }

    /// Instant query; the result vector's samples as (labels, value).
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<(Value, f64)>> {
        let data = self.api("query", Some(expr)).await?;
        Ok(data["result"]
            .as_array()
            .map(|samples| {
                samples
                    .iter()
                    .map(|s| {
                        (s["metric"].clone(), s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Polls `expr` until `accept` holds for its samples.
    pub async fn wait_for(
        &self,
        expr: &str,
        accept: impl Fn(&[(Value, f64)]) -> bool,
    ) -> anyhow::Result<Vec<(Value, f64)>> {
        let started = Instant::now();
        loop {
            let samples = self.query(expr).await?;
            if accept(&samples) {
                return Ok(samples);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{expr}: still {samples:?} after 30s; prometheus log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The address in Prometheus' `msg="Listening on" address=<ip:port>` log line.
fn listening_address(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|line| line.contains("msg=\"Listening on\""))
        .find_map(|line| line.split("address=").nth(1)?.split_whitespace().next()?.trim_matches('"').parse().ok())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// HTTP/1.0 GET: status and body.
async fn http_get(addr: SocketAddr, uri: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {uri} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Ok((status, body))
}

async fn metrics_server(service: &'static str, shutdown: Shutdown) -> (Metrics, SocketAddr) {
    let metrics = Metrics::new(service).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, metrics.clone(), shutdown));
    (metrics, addr)
}

#[tokio::test]
async fn real_prometheus_scrapes_gwb_metrics_and_evaluates_alerts_and_dashboard() {
    let Some(binary) = ensure_prometheus() else { return };
    let (trigger, shutdown) = shutdown::channel();

    let (collector, collector_addr) = metrics_server("gwb-collector", shutdown.clone()).await;
    collector.graph_request(Some(200));
    collector.graph_request(Some(429));
    collector.delta_round("groups", "ok");
    collector.events_published(42);
    let (planner, planner_addr) = metrics_server("gwb-planner", shutdown.clone()).await;
    planner.held_deletions(2);
    planner.skipped_members("cloud_only_user", 3);
    planner.queue_lag("gwb.events", Duration::from_millis(250));
    let (writer, writer_addr) = metrics_server("gwb-writer", shutdown.clone()).await;
    writer.command("create_group", "applied");
    writer.ldap_operation("add", "ok", Duration::from_millis(4));
    writer.members_written(10);
    for seconds in [0.3, 0.4, 0.6, 2.0] {
        writer.end_to_end_latency(Duration::from_secs_f64(seconds));
    }

    let targets = [
        Target { job: "gwb-collector", addr: collector_addr },
        Target { job: "gwb-planner", addr: planner_addr },
        Target { job: "gwb-writer", addr: writer_addr },
    ];
    let prometheus = Prometheus::start(&binary, &targets).await.unwrap();

    let up = prometheus
        .wait_for("up{job=~\"gwb-.*\"}", |samples| samples.len() == 3 && samples.iter().all(|(_, v)| *v == 1.0))
        .await
        .unwrap();
    assert_eq!(up.len(), 3);
    let build = prometheus.query("gwb_build_info").await.unwrap();
    let services: Vec<&str> = build.iter().filter_map(|(labels, _)| labels["service"].as_str()).collect();
    assert_eq!(services.len(), 3, "{build:?}");
    for (labels, _) in &build {
        assert_eq!(labels["service"], labels["job"], "each job reports its own service: {labels}");
    }

    let expect = [
        ("gwb_events_published_total{job=\"gwb-collector\"}", 42.0),
        ("gwb_graph_requests_total{status=\"429\"}", 1.0),
        ("gwb_delta_rounds_total{resource=\"groups\",result=\"ok\"}", 1.0),
        ("gwb_held_deletions", 2.0),
        ("gwb_skipped_members{reason=\"cloud_only_user\"}", 3.0),
        ("gwb_queue_lag_seconds{queue=\"gwb.events\"}", 0.25),
        ("gwb_commands_total{kind=\"create_group\",result=\"applied\"}", 1.0),
        ("gwb_members_written_total", 10.0),
        ("gwb_ldap_operation_duration_seconds_count{kind=\"add\"}", 1.0),
        ("gwb_end_to_end_latency_seconds_count", 4.0),
        // Two of four observations are ≤ 0.5 s: the median lies in the 0.25–0.5 bucket.
        ("histogram_quantile(0.5, sum by (le) (gwb_end_to_end_latency_seconds_bucket)) <= 0.5", 0.5),
    ];
    for (expr, value) in expect {
        let samples = prometheus.query(expr).await.unwrap();
        assert_eq!(samples.len(), 1, "{expr}: {samples:?}");
        assert!((samples[0].1 - value).abs() < 1e-9, "{expr}: {samples:?}, want {value}");
    }
    assert!(
        prometheus.query("process_resident_memory_bytes").await.unwrap().iter().all(|(_, v)| *v > 0.0),
        "process metrics are scraped"
    );

    // The deploy/ alert rules load, evaluate without errors, and held deletions alert.
    prometheus.wait_for("ALERTS{alertname=\"GwbHeldDeletions\"}", |samples| !samples.is_empty()).await.unwrap();
    let rules = prometheus.api("rules", None).await.unwrap();
    let mut count = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            count += 1;
            assert_ne!(rule["health"], "err", "{rule}");
        }
    }
    assert!(count >= 6, "{rules}");

    // Every dashboard expression is valid PromQL for this Prometheus.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/grafana/dashboards/gwb.json")).unwrap())
            .unwrap();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            prometheus.query(expr).await.unwrap_or_else(|e| panic!("panel {}: {e}", panel["title"]));
            exprs += 1;
        }
    }
    assert!(exprs >= 10);
    // The dashboard's latency query yields a series once two scrapes give a rate.
    prometheus
        .wait_for(
            "histogram_quantile(0.99, sum by (le) (rate(gwb_end_to_end_latency_seconds_bucket[5m])))",
            |samples| samples.len() == 1,
        )
        .await
        .unwrap();

    trigger.trigger();
}

/// The real services, during an end-to-end run, scraped by the real Prometheus: the key
/// series of every service return data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_the_running_services_during_an_end_to_end_run() {
    let Some(binary) = ensure_prometheus() else { return };
    let lab = gwb_tests::fixture::TestLab::new("e2e").await.unwrap();
    let ad = &lab.ad;
    let (_, sid) = ad.create_user(&lab.users_ou, &gwb_tests::pipeline::unique("p")).await.unwrap();
    let pipeline =
        gwb_tests::pipeline::Pipeline::start(gwb_tests::pipeline::Options::new(&lab.groups_ou)).await.unwrap();
    let user = pipeline.synced_user(&sid).await.unwrap();
    let group = pipeline.security_group("Scraped", vec![user]).await.unwrap();
    assert!(pipeline.gwbctl(&["enable"]).await.unwrap().status.success());
    pipeline
        .eventually("the group is written", Duration::from_secs(60), || async {
            anyhow::ensure!(!ad.find_groups_by_anchor(&format!("Group_{group}")).await?.is_empty(), "not yet");
            Ok(())
        })
        .await
        .unwrap();

    let targets: Vec<Target> = pipeline
        .metrics_targets()
        .into_iter()
        .map(|(name, addr)| {
            let job = match name.as_str() {
                "gwb-planner" => "gwb-planner",
                "gwb-writer" => "gwb-writer",
                _ => "gwb-collector",
            };
            Target { job, addr }
        })
        .collect();
    let prometheus = Prometheus::start(&binary, &targets).await.unwrap();
    prometheus
        .wait_for("up{job=~\"gwb-.*\"}", |samples| samples.len() == 3 && samples.iter().all(|(_, v)| *v == 1.0))
        .await
        .unwrap();
    for expr in [
        "gwb_graph_requests_total{job=\"gwb-collector\",status=\"200\"}",
        "gwb_delta_rounds_total{job=\"gwb-collector\",result=\"completed\"}",
        "gwb_events_published_total{job=\"gwb-collector\"}",
        "gwb_commands_total{job=\"gwb-planner\",result=\"planned\"}",
        "gwb_commands_total{job=\"gwb-writer\",result=\"applied\"}",
        "gwb_ldap_operation_duration_seconds_count{job=\"gwb-writer\"}",
        "gwb_members_written_total{job=\"gwb-writer\"}",
        "gwb_end_to_end_latency_seconds_count{job=\"gwb-writer\"}",
    ] {
        let samples = prometheus.wait_for(expr, |samples| samples.iter().any(|(_, v)| *v > 0.0)).await.unwrap();
        assert!(!samples.is_empty(), "{expr}");
    }
    drop(prometheus);
    lab.finish(pipeline, Ok(())).await.unwrap();
}
