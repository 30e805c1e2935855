//! Binding listeners and reporting what was bound.
//!
//! Every listener of every service accepts port 0. The address the kernel chose is
//! reported in two ways: one log line (`listening`, with `listener` and `addr` fields)
//! and, when the service was started with `--address-dir <dir>`, a file
//! `<dir>/<service>.<listener>.addr` holding `ip:port`, written atomically (temporary
//! file, then rename), so a harness that sees the file sees the whole address. Tests and
//! the bench read that file instead of choosing a "free" port ahead of time, which
//! another connection can take in between.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokio::net::TcpListener;

/// Where the addresses are reported: set once per process by the service's `main`.
static REPORT: OnceLock<Report> = OnceLock::new();

struct Report {
    service: String,
    dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{key} {addr}: cannot listen: {source}")]
    Bind { key: String, addr: SocketAddr, source: std::io::Error },
    #[error("cannot report the address of {key} in {path}: {source}")]
    Report { key: String, path: PathBuf, source: std::io::Error },
}

/// Names the service and the directory (from `--address-dir`) that bound addresses are
/// reported in. Later calls are ignored: one process is one service.
pub fn init(service: &str, address_dir: Option<&Path>) {
    let _ = REPORT.set(Report { service: service.to_string(), dir: address_dir.map(Path::to_path_buf) });
}

/// The file a service reports `listener`'s address in, inside `dir`.
pub fn address_file(dir: &Path, service: &str, listener: &str) -> PathBuf {
    dir.join(format!("{service}.{listener}.addr"))
}

/// Binds `addr` (port 0 allowed) and reports the bound address under `listener`
/// (e.g. `control`, `metrics`, `notifications`). `key` names the setting in errors.
pub async fn bind(listener: &str, key: &str, addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let bound = TcpListener::bind(addr).await.map_err(|source| ListenError::Bind { key: key.into(), addr, source })?;
    report(listener, key, &bound)?;
    Ok(bound)
}

/// Reports an already bound listener (one injected by a caller, or bound by [`bind`]).
pub fn report(listener: &str, key: &str, bound: &TcpListener) -> Result<SocketAddr, ListenError> {
    let addr = bound.local_addr().map_err(|source| ListenError::Bind {
        key: key.into(),
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    tracing::info!(listener, addr = %addr, "listening");
    if let Some(Report { service, dir: Some(dir) }) = REPORT.get() {
        let path = address_file(dir, service, listener);
        write_atomically(&path, &addr.to_string()).map_err(|source| ListenError::Report {
            key: key.into(),
            path: path.clone(),
            source,
        })?;
    }
    Ok(addr)
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let temporary = path.with_extension(format!("addr.{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn port_zero_is_bound_and_reported_in_the_address_dir() {
        let dir = std::env::temp_dir().join(format!("gwb-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        init("gwb-test", Some(&dir));
        let listener = bind("control", "control.listen", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let bound = listener.local_addr().unwrap();
        assert_ne!(bound.port(), 0);
        let reported = std::fs::read_to_string(address_file(&dir, "gwb-test", "control")).unwrap();
        assert_eq!(reported, bound.to_string());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
