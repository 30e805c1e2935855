//! `gwb-healthcheck [HOST:PORT] [PATH]`: exits 0 when `GET http://HOST:PORT/PATH`
//! answers 200 within 3 s, else 1 (with the reason on stderr).
//!
//! Container healthchecks run a command inside the image; the slim runtime image has
//! no curl or wget, and a service's own binary would need its whole configuration,
//! so every image carries this small client for the metrics server's `/healthz`.
//! Defaults: `127.0.0.1:9464` and `/healthz`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_else(|| "127.0.0.1:9464".to_string());
    let path = args.next().unwrap_or_else(|| "/healthz".to_string());
    match check(&target, &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("gwb-healthcheck: {target}{path}: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn check(target: &str, path: &str) -> Result<(), String> {
    let addr: SocketAddr = target
        .to_socket_addrs()
        .map_err(|e| format!("bad address: {e}"))?
        .next()
        .ok_or("address resolves to nothing")?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| e.to_string())?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let status = status_line.split_whitespace().nth(1).unwrap_or("none");
    if status == "200" { Ok(()) } else { Err(format!("status {status}")) }
}
