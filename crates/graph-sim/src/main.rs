//! `graph-sim` binary: serves one simulated tenant until SIGTERM or Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use graph_sim::{PagingConfig, Seed, SimConfig};

/// A Microsoft Graph simulator: OAuth2 client credentials, groups/users delta
/// queries with Graph's paging and failure modes, and an admin API on /admin.
#[derive(Parser, Debug)]
#[command(name = "graph-sim", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "GRAPH_SIM_LISTEN", default_value = "127.0.0.1:8600")]
    listen: SocketAddr,
    /// Directory (tenant) id the token endpoint accepts.
    #[arg(long, env = "GRAPH_SIM_TENANT_ID")]
    tenant_id: String,
    /// Application (client) id of the registered app.
    #[arg(long, env = "GRAPH_SIM_CLIENT_ID")]
    client_id: String,
    /// File holding the app's client secret (a trailing newline is ignored).
    #[arg(long, env = "GRAPH_SIM_CLIENT_SECRET_FILE")]
    client_secret_file: PathBuf,
    /// PEM certificate registered on the app for client assertions (repeatable).
    #[arg(long = "client-certificate-file", env = "GRAPH_SIM_CLIENT_CERTIFICATE_FILE", value_delimiter = ',')]
    client_certificate_files: Vec<PathBuf>,
    /// JSON tenant (users, groups, objects) loaded before serving.
    #[arg(long, env = "GRAPH_SIM_SEED")]
    seed: Option<PathBuf>,
    /// Write the base URL (http://host:port) to this file once listening.
    #[arg(long, env = "GRAPH_SIM_ADDR_FILE")]
    addr_file: Option<PathBuf>,
    /// Scheme and authority used in @odata links when clients come through a proxy.
    #[arg(long, env = "GRAPH_SIM_PUBLIC_URL")]
    public_url: Option<String>,
    /// Lifetime of issued access tokens.
    #[arg(long, env = "GRAPH_SIM_TOKEN_LIFETIME_SECS", default_value_t = 3599)]
    token_lifetime_secs: u64,
    /// Age after which a deltaLink answers syncStateNotFound (Graph: 7 days).
    #[arg(long, env = "GRAPH_SIM_DELTA_TOKEN_LIFETIME_SECS", default_value_t = 7 * 24 * 3600)]
    delta_token_lifetime_secs: u64,
    /// Maximum objects per delta page.
    #[arg(long, env = "GRAPH_SIM_MAX_OBJECTS_PER_PAGE", default_value_t = 100)]
    max_objects_per_page: usize,
    /// Minimum objects per delta page (page sizes vary between the two).
    #[arg(long, env = "GRAPH_SIM_MIN_OBJECTS_PER_PAGE", default_value_t = 50)]
    min_objects_per_page: usize,
    /// Members per members@delta slice.
    #[arg(long, env = "GRAPH_SIM_MEMBER_SLICE", default_value_t = 500)]
    member_slice: usize,
    /// Insert an empty page after every n-th page.
    /// Milliseconds to serve each delta page (real Graph: 300–1,500 ms on big tenants).
    #[arg(long, env = "GRAPH_SIM_PAGE_DELAY_MS", default_value_t = 0)]
    page_delay_ms: u64,
    #[arg(long, env = "GRAPH_SIM_EMPTY_PAGE_EVERY")]
    empty_page_every: Option<u32>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "GRAPH_SIM_LOG", default_value = "info")]
    log: String,
}

fn read_secret(path: &Path) -> anyhow::Result<String> {
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the client secret file {}", path.display()))?;
    let secret = raw.trim_end_matches(['\n', '\r']);
    if secret.trim().is_empty() {
        bail!("the client secret file {} is empty", path.display());
    }
    Ok(secret.to_owned())
}

fn read_seed(path: &Path) -> anyhow::Result<Seed> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the seed file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("the seed file {} is not a valid seed", path.display()))
}

/// Written to a temporary name first so that a watcher never reads half a URL.
fn write_addr_file(path: &Path, url: &str) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, url).with_context(|| format!("cannot write {}", Path::new(&tmp).display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let config = SimConfig {
        tenant_id: args.tenant_id,
        client_id: args.client_id,
        client_secret: read_secret(&args.client_secret_file)?,
        token_lifetime: Duration::from_secs(args.token_lifetime_secs),
        delta_token_lifetime: Duration::from_secs(args.delta_token_lifetime_secs),
        page: PagingConfig {
            max_objects_per_page: args.max_objects_per_page,
            min_objects_per_page: args.min_objects_per_page.min(args.max_objects_per_page),
            member_slice: args.member_slice,
            empty_page_every: args.empty_page_every,
            page_delay_ms: args.page_delay_ms,
            ..PagingConfig::default()
        },
        public_url: args.public_url,
        seed: args.seed.as_deref().map(read_seed).transpose()?,
        client_certificates: args
            .client_certificate_files
            .iter()
            .map(|p| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read the certificate file {}", p.display()))
            })
            .collect::<anyhow::Result<_>>()?,
        ..SimConfig::default()
    };

    if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "the admin API has no authentication; bind graph-sim to loopback");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    // The address file comes first, so that whoever sees the stdout line finds it.
    if let Some(path) = &args.addr_file {
        write_addr_file(path, &url)?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {url}")?;
        out.flush()?;
    }
    tracing::info!(%url, tenant_id = %config.tenant_id, client_id = %config.client_id, "graph-sim listening");
    graph_sim::serve(listener, config, shutdown_signal()).await?;
    Ok(())
}
