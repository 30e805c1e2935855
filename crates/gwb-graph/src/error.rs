/// Graph failures, classified where they are seen.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The delta token is gone (410, `syncStateNotFound`, `resyncRequired`): the caller
    /// must drop its deltaLink and start a full round, from `location` when given.
    #[error("Graph asks for a full resync ({reason})")]
    ResyncRequired { reason: String, location: Option<String> },
    /// Retries exhausted on throttling, 5xx or network faults; try again later.
    #[error("Graph unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    /// Credentials refused by the token endpoint or by Graph (after one renewal).
    #[error("Graph authentication failed: {0}")]
    Unauthorized(String),
    /// A response that is not a valid delta page (truncated JSON, missing links…).
    #[error("malformed Graph response from {url}: {reason}")]
    Malformed { url: String, reason: String },
    /// Any other 4xx: retrying the same request will not help.
    #[error("Graph refused the request ({status} {code}): {message}")]
    Rejected { status: u16, code: String, message: String },
    #[error("invalid Graph configuration: {0}")]
    Config(String),
}

impl GraphError {
    /// Whether the next round may succeed without operator action.
    pub fn is_transient(&self) -> bool {
        matches!(self, GraphError::Unavailable { .. } | GraphError::Malformed { .. })
    }
}
