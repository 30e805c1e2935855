use gwb_core::command::FailureClass;
use ldap3::LdapError;

/// A directory failure, classified for the writer's retry decision. The message names
/// the operation and the DN and carries the server's text; it never holds the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DirectoryError {
    pub class: FailureClass,
    /// LDAP result code, when the server answered with one.
    pub code: Option<u32>,
    pub message: String,
}

// Result codes the writer branches on (RFC 4511 §4.1.9 and AD's usage).
pub(crate) const NO_SUCH_ATTRIBUTE: u32 = 16;
pub(crate) const CONSTRAINT_VIOLATION: u32 = 19;
pub(crate) const ATTRIBUTE_OR_VALUE_EXISTS: u32 = 20;
pub(crate) const INVALID_ATTRIBUTE_SYNTAX: u32 = 21;
pub(crate) const NO_SUCH_OBJECT: u32 = 32;
pub(crate) const INVALID_DN_SYNTAX: u32 = 34;
pub(crate) const BUSY: u32 = 51;
pub(crate) const UNAVAILABLE: u32 = 52;
pub(crate) const UNWILLING_TO_PERFORM: u32 = 53;
pub(crate) const ENTRY_ALREADY_EXISTS: u32 = 68;

impl DirectoryError {
    pub fn permanent(message: impl Into<String>) -> Self {
        DirectoryError { class: FailureClass::Permanent, code: None, message: message.into() }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        DirectoryError { class: FailureClass::Transient, code: None, message: message.into() }
    }

    pub fn is_transient(&self) -> bool {
        self.class == FailureClass::Transient
    }

    /// From an LDAP result with a non-zero code; `context` says what was attempted.
    pub(crate) fn from_result(context: &str, rc: u32, text: &str) -> Self {
        let class = match rc {
            BUSY | UNAVAILABLE => FailureClass::Transient,
            _ => FailureClass::Permanent,
        };
        let text = text.trim_end_matches(['\0', '\n', ' ']);
        let message = if text.is_empty() {
            format!("{context}: LDAP {rc} ({})", result_name(rc))
        } else {
            format!("{context}: LDAP {rc} ({}): {text}", result_name(rc))
        };
        DirectoryError { class, code: Some(rc), message }
    }

    pub(crate) fn timeout(context: &str) -> Self {
        DirectoryError::transient(format!("{context}: timed out"))
    }

    /// Classifies an ldap3 error. Returns whether the connection must be dropped too.
    pub(crate) fn from_ldap(context: &str, err: LdapError) -> (Self, bool) {
        match err {
            LdapError::LdapResult { result } => (DirectoryError::from_result(context, result.rc, &result.text), false),
            LdapError::Timeout { .. } => (DirectoryError::timeout(context), true),
            LdapError::Io { source } => {
                // tokio-rustls reports certificate problems as I/O errors wrapping the
                // rustls error; those are configuration faults, not network blips.
                let tls = source
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .map(|e| format!("{context}: TLS handshake failed: {e}"));
                match tls {
                    Some(message) => (DirectoryError::permanent(message), true),
                    None => (DirectoryError::transient(format!("{context}: connection error: {source}")), true),
                }
            }
            LdapError::Rustls { source } => {
                (DirectoryError::permanent(format!("{context}: TLS error: {source}")), true)
            }
            LdapError::DNSName { source } => {
                (DirectoryError::permanent(format!("{context}: invalid server name for TLS: {source}")), true)
            }
            LdapError::UrlParsing { .. } | LdapError::UnknownScheme(_) => {
                (DirectoryError::permanent(format!("{context}: {err}")), true)
            }
            LdapError::OpSend { .. }
            | LdapError::ResultRecv { .. }
            | LdapError::IdScrubSend { .. }
            | LdapError::MiscSend { .. }
            | LdapError::EndOfStream => (DirectoryError::transient(format!("{context}: connection lost: {err}")), true),
            other => (DirectoryError::permanent(format!("{context}: {other}")), false),
        }
    }
}

fn result_name(rc: u32) -> &'static str {
    match rc {
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        NO_SUCH_ATTRIBUTE => "noSuchAttribute",
        17 => "undefinedAttributeType",
        CONSTRAINT_VIOLATION => "constraintViolation",
        ATTRIBUTE_OR_VALUE_EXISTS => "attributeOrValueExists",
        INVALID_ATTRIBUTE_SYNTAX => "invalidAttributeSyntax",
        NO_SUCH_OBJECT => "noSuchObject",
        INVALID_DN_SYNTAX => "invalidDNSyntax",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        BUSY => "busy",
        UNAVAILABLE => "unavailable",
        UNWILLING_TO_PERFORM => "unwillingToPerform",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        67 => "notAllowedOnRDN",
        ENTRY_ALREADY_EXISTS => "entryAlreadyExists",
        69 => "objectClassModsProhibited",
        80 => "other",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_unavailable_are_transient() {
        assert!(DirectoryError::from_result("modify", BUSY, "").is_transient());
        assert!(DirectoryError::from_result("modify", UNAVAILABLE, "").is_transient());
        let e = DirectoryError::from_result("add CN=x", ENTRY_ALREADY_EXISTS, "exists\0");
        assert!(!e.is_transient());
        assert_eq!(e.code, Some(68));
        assert_eq!(e.message, "add CN=x: LDAP 68 (entryAlreadyExists): exists");
    }

    #[test]
    fn connection_failures_are_transient_and_drop_the_connection() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let (e, drop) = DirectoryError::from_ldap("connect", LdapError::from(io));
        assert!(e.is_transient() && drop);
        let (e, drop) = DirectoryError::from_ldap("search", LdapError::EndOfStream);
        assert!(e.is_transient() && drop);
    }

    #[test]
    fn certificate_errors_are_permanent() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let (e, _) = DirectoryError::from_ldap("connect", LdapError::from(io));
        assert!(!e.is_transient());
        assert!(e.message.contains("TLS handshake failed"), "{}", e.message);
    }
}
