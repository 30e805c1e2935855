//! Secrets (client secret, bind password, control token) come from files, never from
//! the TOML file or the command line, and never reach logs: [`Secret`]'s `Debug` and
//! `Display` print a fixed marker.

use std::fmt;
use std::path::Path;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: call only where it is sent to its one destination.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{key}: cannot read secret file {path}: {source}")]
    Read { key: String, path: String, source: std::io::Error },
    #[error("{key}: secret file {path} is empty")]
    Empty { key: String, path: String },
    #[error("{key}: secret file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen { key: String, path: String, mode: u32 },
}

/// Reads a secret file named by config key `key`. Trailing newlines are dropped. A file
/// that group or others can read is refused: a secret is only as safe as its file.
pub fn read_secret_file(key: &str, path: &Path) -> Result<Secret, SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let meta =
        std::fs::metadata(path).map_err(|source| SecretError::Read { key: key.into(), path: shown.clone(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen { key: key.into(), path: shown, mode });
    }
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        key: key.into(),
        path: shown.clone(),
        source,
    })?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(SecretError::Empty { key: key.into(), path: shown });
    }
    Ok(Secret(value.to_string()))
}

/// Writes a secret file with mode 0600 (used by scripts' Rust helpers and tests).
pub fn write_secret_file(path: &Path, value: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, value)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_never_printed() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }

    #[test]
    fn open_file_refused_and_private_file_read() {
        let dir = std::env::temp_dir().join(format!("gwb-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let path = dir.join("s");
        std::fs::write(&path, "value\n").ok();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).ok();
        let err = read_secret_file("graph.client_secret_file", &path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("graph.client_secret_file") && err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).ok();
        let secret = read_secret_file("k", &path).ok().map(|s| s.expose().to_string());
        assert_eq!(secret.as_deref(), Some("value"));
    }
}
