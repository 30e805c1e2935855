use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::DirectoryError;

/// Values per `member` modify. Samba and AD both take this comfortably (well under
/// AD's 10 MB MaxReceiveBuffer) and it keeps one failed batch cheap to bisect.
pub const DEFAULT_MEMBER_BATCH_SIZE: usize = 1000;

pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach and bind to the directory, and which part of it the writer may touch.
#[derive(Clone)]
pub struct DirectoryConfig {
    /// `ldaps://host[:port]`, or `ldap://host[:port]` together with `starttls`.
    pub url: String,
    pub starttls: bool,
    /// PEM file with the CA certificate(s) that issued the DC's certificate. Only
    /// these are trusted; the system store is not consulted.
    pub ca_file: PathBuf,
    pub bind_dn: String,
    pub bind_password: String,
    /// DNs the writer may create, change, move and delete groups under (including the
    /// retired OU). Objects elsewhere are never modified.
    pub managed_ous: Vec<String>,
    /// Limit for each LDAP operation (connect and bind included).
    pub operation_timeout: Duration,
    pub member_batch_size: usize,
    /// Rename a written group's sAMAccountName when its display name changes. Off by
    /// default: AD documents that the pre-Windows 2000 name "should not change", and
    /// scripts, ACL exports and NTFS tools refer to groups by it.
    pub follow_display_name: bool,
    /// Domain SIDs (`S-1-5-21-a-b-c`) of trusted domains whose accounts may be written
    /// as members (the DC then creates their foreignSecurityPrincipals). Members with a
    /// SID of any other domain are skipped with the reason.
    pub foreign_domain_sids: Vec<String>,
    /// Write a cloud group converted from AD (it carries the SID of an AD group) back
    /// to that original group, found by SID, stamping the anchor on it. Off: such a
    /// group is refused with the reason, and never written as a second group.
    pub adopt_converted_groups: bool,
    /// Where original groups may be adopted from (and, once adopted, are written in
    /// place: neither moved nor renamed). Groups elsewhere are refused.
    pub adoptable_ous: Vec<String>,
}

impl DirectoryConfig {
    /// A configuration with the default timeout and batch size.
    pub fn new(
        url: impl Into<String>,
        ca_file: impl Into<PathBuf>,
        bind_dn: impl Into<String>,
        bind_password: impl Into<String>,
        managed_ous: Vec<String>,
    ) -> Self {
        DirectoryConfig {
            url: url.into(),
            starttls: false,
            ca_file: ca_file.into(),
            bind_dn: bind_dn.into(),
            bind_password: bind_password.into(),
            managed_ous,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            member_batch_size: DEFAULT_MEMBER_BATCH_SIZE,
            follow_display_name: false,
            foreign_domain_sids: Vec::new(),
            adopt_converted_groups: false,
            adoptable_ous: Vec::new(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), DirectoryError> {
        let url = self.url.trim().to_ascii_lowercase();
        if url.starts_with("ldap://") {
            if !self.starttls {
                return Err(DirectoryError::permanent(format!(
                    "refusing to bind over plain LDAP ({}): use ldaps:// or enable starttls",
                    self.url
                )));
            }
        } else if !url.starts_with("ldaps://") {
            return Err(DirectoryError::permanent(format!(
                "directory url must start with ldaps:// or ldap:// (with starttls), got {:?}",
                self.url
            )));
        }
        if self.managed_ous.is_empty() {
            return Err(DirectoryError::permanent(
                "no managed OUs configured: the writer would have nowhere it may write",
            ));
        }
        if let Some(bad) =
            self.managed_ous.iter().find(|ou| crate::codec::parse_dn(ou).is_none_or(|rdns| rdns.is_empty()))
        {
            return Err(DirectoryError::permanent(format!("managed OU {bad:?} is not a distinguished name")));
        }
        if let Some(bad) =
            self.adoptable_ous.iter().find(|ou| crate::codec::parse_dn(ou).is_none_or(|rdns| rdns.is_empty()))
        {
            return Err(DirectoryError::permanent(format!("adoptable OU {bad:?} is not a distinguished name")));
        }
        if self.adopt_converted_groups && self.adoptable_ous.is_empty() {
            return Err(DirectoryError::permanent(
                "adopt_converted_groups is on but adoptable_ous lists no OU: no original group could be adopted",
            ));
        }
        if self.member_batch_size == 0 {
            return Err(DirectoryError::permanent("member_batch_size must be at least 1"));
        }
        if self.operation_timeout.is_zero() {
            return Err(DirectoryError::permanent("operation_timeout must be positive"));
        }
        Ok(())
    }
}

impl fmt::Debug for DirectoryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryConfig")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("ca_file", &self.ca_file)
            .field("bind_dn", &self.bind_dn)
            .field("bind_password", &"<redacted>")
            .field("managed_ous", &self.managed_ous)
            .field("operation_timeout", &self.operation_timeout)
            .field("member_batch_size", &self.member_batch_size)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gwb_core::command::FailureClass;

    fn config() -> DirectoryConfig {
        DirectoryConfig::new(
            "ldaps://dc1.lab.example",
            "/tmp/ca.pem",
            "CN=Administrator,CN=Users,DC=lab,DC=example",
            "s3cret-Passw0rd",
            vec!["OU=Groups,DC=lab,DC=example".into()],
        )
    }

    #[test]
    fn debug_redacts_password() {
        let text = format!("{:?}", config());
        assert!(!text.contains("s3cret"));
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn plain_ldap_needs_starttls() {
        let mut c = config();
        c.url = "ldap://dc1.lab.example".into();
        let err = c.validate().err();
        assert_eq!(err.map(|e| e.class), Some(FailureClass::Permanent));
        c.starttls = true;
        assert!(c.validate().is_ok());
        c.url = "http://x".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn managed_ous_must_be_dns() {
        let mut c = config();
        c.managed_ous = vec![];
        assert!(c.validate().is_err());
        c.managed_ous = vec!["not a dn".into()];
        assert!(c.validate().is_err());
        assert!(config().validate().is_ok());
    }
}
