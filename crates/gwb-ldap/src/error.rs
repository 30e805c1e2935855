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
pub(crate) const TIME_LIMIT_EXCEEDED: u32 = 3;
pub(crate) const REFERRAL: u32 = 10;
pub(crate) const ADMIN_LIMIT_EXCEEDED: u32 = 11;
pub(crate) const BUSY: u32 = 51;
pub(crate) const UNAVAILABLE: u32 = 52;
pub(crate) const UNWILLING_TO_PERFORM: u32 = 53;
pub(crate) const ENTRY_ALREADY_EXISTS: u32 = 68;
pub(crate) const OTHER: u32 = 80;

/// Attempts for a result that is transient only usually (see `retry_budget`): with the
/// writer's backoff (400 ms doubling to 30 s) about a minute and a half.
const LIMITED_RETRIES: u32 = 8;

/// What a referral means for the writer, which never follows one: it writes to one DC.
const REFERRAL_HELP: &str = "the DC referred the operation elsewhere: it is a read-only DC, or the DN lies in \
    another domain or naming context; point [directory] url at a writable DC of the domain that holds the managed OUs";

impl DirectoryError {
    pub fn permanent(message: impl Into<String>) -> Self {
        DirectoryError { class: FailureClass::Permanent, code: None, message: message.into() }
    }

    /// A write a safety rule refuses for this group as it stands (see
    /// [`FailureClass::Refused`]).
    pub fn refused(message: impl Into<String>) -> Self {
        DirectoryError { class: FailureClass::Refused, code: None, message: message.into() }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        DirectoryError { class: FailureClass::Transient, code: None, message: message.into() }
    }

    pub fn is_transient(&self) -> bool {
        self.class == FailureClass::Transient
    }

    /// How many consecutive attempts a transient failure deserves before it counts as
    /// permanent. `None`: no limit — the DC is down or busy (51, 52, a lost connection)
    /// and the command must wait for it, in order. A limit for results that are usually
    /// passing but may not be (3, 11, 80): a request that keeps failing must not hold its
    /// partition forever.
    pub fn retry_budget(&self) -> Option<u32> {
        match self.code {
            Some(TIME_LIMIT_EXCEEDED | ADMIN_LIMIT_EXCEEDED | OTHER) => Some(LIMITED_RETRIES),
            _ => None,
        }
    }

    /// From an LDAP result with a non-zero code; `context` says what was attempted.
    ///
    /// Transient (retried with backoff): a DC that is busy or unavailable (51, 52), a
    /// search that hit the DC's time or administrative limit under load (3, 11; AD's
    /// MaxQueryDuration and friends), and AD's catch-all 80, which Windows DCs return for
    /// passing faults such as a replication or a database lock. Everything else is
    /// permanent: retrying the same request gives the same answer.
    pub(crate) fn from_result(context: &str, rc: u32, text: &str) -> Self {
        Self::from_result_with_referrals(context, rc, text, &[])
    }

    pub(crate) fn from_result_with_referrals(context: &str, rc: u32, text: &str, referrals: &[String]) -> Self {
        let class = match rc {
            TIME_LIMIT_EXCEEDED | ADMIN_LIMIT_EXCEEDED | BUSY | UNAVAILABLE | OTHER => FailureClass::Transient,
            _ => FailureClass::Permanent,
        };
        let text = text.trim_end_matches(['\0', '\n', ' ']);
        let mut message = if text.is_empty() {
            format!("{context}: LDAP {rc} ({})", result_name(rc))
        } else {
            format!("{context}: LDAP {rc} ({}): {text}", result_name(rc))
        };
        if rc == REFERRAL {
            message.push_str(&format!("; {REFERRAL_HELP}"));
            if !referrals.is_empty() {
                message.push_str(&format!(" (referred to {})", referrals.join(", ")));
            }
        }
        DirectoryError { class, code: Some(rc), message }
    }

    pub(crate) fn timeout(context: &str) -> Self {
        DirectoryError::transient(format!("{context}: timed out"))
    }

    /// Classifies an ldap3 error. Returns whether the connection must be dropped too.
    pub(crate) fn from_ldap(context: &str, err: LdapError) -> (Self, bool) {
        match err {
            LdapError::LdapResult { result } => {
                (DirectoryError::from_result_with_referrals(context, result.rc, &result.text, &result.refs), false)
            }
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
        TIME_LIMIT_EXCEEDED => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        8 => "strongerAuthRequired",
        REFERRAL => "referral",
        ADMIN_LIMIT_EXCEEDED => "adminLimitExceeded",
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
        OTHER => "other",
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
    fn limits_and_other_are_transient_and_a_referral_says_which_dc_to_use() {
        for rc in [TIME_LIMIT_EXCEEDED, ADMIN_LIMIT_EXCEEDED, OTHER] {
            let error = DirectoryError::from_result("search", rc, "");
            assert!(error.is_transient(), "{rc}");
            assert_eq!(error.retry_budget(), Some(LIMITED_RETRIES), "{rc}");
        }
        assert_eq!(DirectoryError::from_result("search", BUSY, "").retry_budget(), None);
        let referral = DirectoryError::from_result_with_referrals(
            "modify CN=g,OU=Cloud Groups,DC=child,DC=contoso,DC=com",
            REFERRAL,
            "0000202B: RefErr",
            &["ldap://child.contoso.com/DC=child,DC=contoso,DC=com".into()],
        );
        assert!(!referral.is_transient());
        assert!(referral.message.contains("writable DC of the domain"), "{}", referral.message);
        assert!(referral.message.contains("referred to ldap://child.contoso.com/"), "{}", referral.message);
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
