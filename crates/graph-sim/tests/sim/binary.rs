use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use graph_sim::AdminClient;
use serde_json::json;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("graph-sim-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn command(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_graph-sim"));
    c.args(["--listen", "127.0.0.1:0", "--tenant-id", "t-1", "--client-id", "c-1"])
        .arg("--client-secret-file")
        .arg(dir.join("secret"))
        .env_remove("GRAPH_SIM_SEED")
        .env("GRAPH_SIM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[tokio::test]
async fn binary_serves_seed_and_stops_on_sigterm() {
    let dir = temp_dir("bin");
    std::fs::write(dir.join("secret"), "s3cret\n").unwrap();
    let group = uuid::Uuid::new_v4();
    let seed = json!({"users": [], "groups": [{"id": group.to_string(), "displayName": "seeded"}]});
    std::fs::write(dir.join("seed.json"), seed.to_string()).unwrap();
    let mut child = command(&dir)
        .arg("--seed")
        .arg(dir.join("seed.json"))
        .arg("--addr-file")
        .arg(dir.join("addr"))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line).await.unwrap().unwrap().unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"), "{line}");
    assert_eq!(std::fs::read_to_string(dir.join("addr")).unwrap(), url);

    let admin = AdminClient::new(url.clone()).unwrap();
    assert_eq!(admin.get_group(group, false).await.unwrap().fields.display_name.as_deref(), Some("seeded"));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let form = "grant_type=client_credentials&client_id=c-1&client_secret=s3cret&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default";
    let resp = http
        .post(format!("{url}/t-1/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the trailing newline of the secret file is ignored");

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn binary_refuses_an_empty_or_missing_secret() {
    let dir = temp_dir("nosecret");
    let out = command(&dir).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the client secret file"));
    std::fs::write(dir.join("secret"), "\n").unwrap();
    let out = command(&dir).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));
    let _ = std::fs::remove_dir_all(dir);
}
