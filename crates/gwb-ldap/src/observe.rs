//! A hook for the writer's metrics: every LDAP operation, its outcome and duration.

use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationKind {
    /// TCP, TLS handshake and bind of a (re)connection.
    Connect,
    Search,
    Add,
    Modify,
    ModifyDn,
    Delete,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Connect => "connect",
            OperationKind::Search => "search",
            OperationKind::Add => "add",
            OperationKind::Modify => "modify",
            OperationKind::ModifyDn => "modify_dn",
            OperationKind::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationOutcome {
    Success,
    /// The server answered with this non-zero result code.
    Ldap(u32),
    /// No answer: timeout, broken connection or TLS failure.
    NoAnswer,
}

impl OperationOutcome {
    /// A low-cardinality label: `success`, `ldap_<code>` or `no_answer`.
    pub fn label(self) -> String {
        match self {
            OperationOutcome::Success => "success".to_string(),
            OperationOutcome::Ldap(code) => format!("ldap_{code}"),
            OperationOutcome::NoAnswer => "no_answer".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationRecord {
    pub kind: OperationKind,
    pub outcome: OperationOutcome,
    pub duration: Duration,
}

/// Called after every LDAP operation; must be cheap (it runs inline).
pub type OperationObserver = Arc<dyn Fn(&OperationRecord) + Send + Sync>;
