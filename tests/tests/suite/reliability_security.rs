//! Issue 9, case 8 (secrets in logs are covered by observability_secrets):
//! * control calls without a token or with a wrong one are refused (UNAUTHENTICATED;
//!   gwbctl exits 4) on the planner's, the writer's and the collector's gRPC APIs;
//! * a writer pointed at the lab DC with a CA that did not sign its certificate refuses
//!   the connection: it reports the directory as not connected and writes nothing;
//! * a secret file readable by others (0644) stops each service at start with a message
//!   naming the key.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context, ensure};
use gwb_proto::control::v1 as pb;
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline, binary, unique};
use gwb_tests::workload::{compare_with_desired, synced_users};

fn value_of(config: &str, key: &str) -> anyhow::Result<String> {
    config
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix(key)?.trim().strip_prefix('=').map(|v| v.trim().trim_matches('"').to_string())
        })
        .with_context(|| format!("{key} not in config"))
}

async fn channel(addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

fn with_token<T>(message: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    }
    Ok(request)
}

fn expect_unauthenticated<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) -> anyhow::Result<()> {
    match result {
        Err(status) if status.code() == tonic::Code::Unauthenticated => Ok(()),
        other => anyhow::bail!("{what}: expected UNAUTHENTICATED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_apis_refuse_missing_and_wrong_tokens() -> anyhow::Result<()> {
    let lab = TestLab::new("rel-sec").await?;
    let pipeline = Pipeline::start(Options::new(&lab.groups_ou)).await?;
    let result = async {
        let token = std::fs::read_to_string(&pipeline.token_file)?.trim().to_string();
        let wrong = uuid::Uuid::new_v4().to_string();
        let planner = pipeline.control_addr("gwb-planner")?.to_string();
        let writer = pipeline.control_addr("gwb-writer")?.to_string();
        let collector = pipeline.control_addr("gwb-collector")?.to_string();
        for bad in [None, Some(wrong.as_str()), Some(""), Some("Bearer"), Some(&token[..token.len() - 1])] {
            let mut operator = pb::operator_client::OperatorClient::new(channel(&planner).await?);
            expect_unauthenticated(
                &format!("planner GetStatus with {bad:?}"),
                operator.get_status(with_token(pb::GetStatusRequest {}, bad)?).await,
            )?;
            expect_unauthenticated(
                &format!("planner EnableWriteback with {bad:?}"),
                operator.enable_writeback(with_token(pb::EnableWritebackRequest::default(), bad)?).await,
            )?;
            let mut writer_client = pb::writer_client::WriterClient::new(channel(&writer).await?);
            expect_unauthenticated(
                &format!("writer GetWriterState with {bad:?}"),
                writer_client.get_writer_state(with_token(pb::GetWriterStateRequest {}, bad)?).await,
            )?;
            expect_unauthenticated(
                &format!("writer Pause with {bad:?}"),
                writer_client.pause(with_token(pb::PauseRequest::default(), bad)?).await,
            )?;
            let mut collector_client = pb::collector_client::CollectorClient::new(channel(&collector).await?);
            expect_unauthenticated(
                &format!("collector GetCollectorStatus with {bad:?}"),
                collector_client.get_collector_status(with_token(pb::GetCollectorStatusRequest {}, bad)?).await,
            )?;
            expect_unauthenticated(
                &format!("collector FullResync with {bad:?}"),
                collector_client.full_resync(with_token(pb::FullResyncRequest::default(), bad)?).await,
            )?;
        }
        // The right token works on all three.
        pb::operator_client::OperatorClient::new(channel(&planner).await?)
            .get_status(with_token(pb::GetStatusRequest {}, Some(&token))?)
            .await
            .context("planner with the token")?;
        pb::writer_client::WriterClient::new(channel(&writer).await?)
            .get_writer_state(with_token(pb::GetWriterStateRequest {}, Some(&token))?)
            .await
            .context("writer with the token")?;
        pb::collector_client::CollectorClient::new(channel(&collector).await?)
            .get_collector_status(with_token(pb::GetCollectorStatusRequest {}, Some(&token))?)
            .await
            .context("collector with the token")?;
        // gwbctl with a wrong token: exit code 4, and nothing changed.
        let wrong_file = pipeline.dir.join("wrong-token");
        gwb_runtime::secret::write_secret_file(&wrong_file, &wrong)?;
        for endpoint in [pipeline.control_endpoint()] {
            let out = tokio::process::Command::new(binary("gwbctl")?)
                .arg("--endpoint")
                .arg(&endpoint)
                .arg("--token-file")
                .arg(&wrong_file)
                .arg("enable")
                .output()
                .await?;
            ensure!(
                out.status.code() == Some(4),
                "gwbctl enable with a wrong token exited {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let status = pipeline.gwbctl_json(&["status"]).await?;
        ensure!(status["writeback_enabled"] == false, "a refused call changed the switch: {status}");
        Ok(())
    }
    .await;
    lab.finish(pipeline, result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writer_refuses_an_ldaps_server_it_does_not_trust() -> anyhow::Result<()> {
    let lab = TestLab::new("rel-sec").await?;
    let (ad, users_ou, groups_ou) = (&lab.ad, &lab.users_ou, &lab.groups_ou);
    // A freshly generated self-signed CA that signed nothing the DC presents.
    let dir = std::env::temp_dir().join(unique("gwb-untrusted-ca"));
    std::fs::create_dir_all(&dir)?;
    let ca = dir.join("ca.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "2",
            "-subj",
            "/CN=untrusted test CA",
            "-keyout",
        ])
        .arg(dir.join("ca-key.pem"))
        .arg("-out")
        .arg(&ca)
        .output()?;
    ensure!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    let pipeline = Pipeline::start(Options { writer_ca_file: Some(ca.clone()), ..Options::new(groups_ou) }).await?;
    let result = async {
        let users = synced_users(ad, &pipeline.sim, users_ou, 1).await?;
        let group = pipeline.security_group("Untrusted", vec![users[0].id]).await?;
        pipeline.gwbctl_ok(&["enable"]).await?;
        pipeline
            .eventually("the writer reports the directory as not connected", Duration::from_secs(60), || async {
                let status = pipeline.gwbctl_json(&["status"]).await?;
                let writer = status["services"]
                    .as_array()
                    .and_then(|s| {
                        s.iter().find(|s| s["service"].as_str().unwrap_or_default().contains("writer")).cloned()
                    })
                    .context("no writer in status")?;
                ensure!(writer["healthy"] == false, "writer healthy with an untrusted certificate: {writer}");
                Ok(())
            })
            .await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        ensure!(
            ad.find_groups_by_anchor(&format!("Group_{group}")).await?.is_empty(),
            "written through an untrusted connection"
        );
        compare_with_desired(ad, groups_ou, &BTreeMap::new()).await?;
        let log = pipeline.log("gwb-writer");
        ensure!(
            log.to_lowercase().contains("certificate") || log.to_lowercase().contains("tls"),
            "the writer log does not say why: {}",
            log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
        );
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    lab.finish(pipeline, result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_file_readable_by_others_is_refused_at_start() -> anyhow::Result<()> {
    let lab = TestLab::new("rel-sec").await?;
    let pipeline = Pipeline::start(Options::new(&lab.groups_ou)).await?;
    let result = async {
        // (service, config key holding a secret file path)
        for (service, key) in [
            ("gwb-writer", "bind_password_file"),
            ("gwb-collector", "client_secret_file"),
            ("gwb-planner", "token_file"),
            // `[writer.control] token_file` (formerly `[writer] control_token_file`).
            ("gwb-writer", "token_file"),
        ] {
            let config = std::fs::read_to_string(pipeline.config_path(service))?;
            let original = value_of(&config, key)?;
            let open = pipeline.dir.join(format!("open-{service}-{key}"));
            std::fs::copy(&original, &open)?;
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644))?;
            let changed: String = config
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with(key) && l.contains('=') {
                        format!("{key} = \"{}\"", open.display())
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            // Another port, so the running services are not in the way.
            let changed: String = changed
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with("listen") || l.trim_start().starts_with("control_listen") {
                        format!("{} = \"127.0.0.1:0\"", l.split('=').next().unwrap_or_default().trim())
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let path = pipeline.dir.join(format!("open-{service}-{key}.toml"));
            std::fs::write(&path, changed)?;
            let out = tokio::time::timeout(
                Duration::from_secs(20),
                tokio::process::Command::new(binary(service)?)
                    .arg("--config")
                    .arg(&path)
                    .env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default())
                    .output(),
            )
            .await
            .context("the service did not stop")??;
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            ensure!(!out.status.success(), "{service} started with a 0644 {key}: {text}");
            ensure!(
                text.contains(key) && (text.contains("readable") || text.contains("chmod")),
                "{service}: the refusal does not name {key} and say why: {text}"
            );
        }
        Ok(())
    }
    .await;
    lab.finish(pipeline, result).await
}
