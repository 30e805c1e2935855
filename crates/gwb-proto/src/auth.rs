//! Bearer-token authentication shared by every gwb gRPC server (planner, collector,
//! writer). Health checks stay open: servers attach this only to their own services.

use std::sync::Arc;

use tonic::{Request, Status};

/// Checks `authorization: Bearer <token>` against the configured token, in constant
/// time. Without a configured token every call passes (loopback-only deployments).
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<Arc<String>>,
}

impl TokenCheck {
    pub fn new(expected: Option<String>) -> Self {
        TokenCheck { expected: expected.map(Arc::new) }
    }

    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(request) };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing `authorization: Bearer <token>`; gwbctl reads it from --token-file")
            })?;
        if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("the control token is not valid"))
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (index, byte) in a.iter().enumerate() {
        diff |= usize::from(byte ^ b.get(index % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_only_equal() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokeN"));
        assert!(!constant_time_eq(b"token", b"token2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    fn request(header: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = header {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn refuses_missing_and_wrong_tokens() {
        let check = TokenCheck::new(Some("s3cret".into()));
        assert_eq!(check.check(request(None)).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(check.check(request(Some("Bearer nope"))).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(check.check(request(Some("s3cret"))).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(check.check(request(Some("Bearer s3cret"))).is_ok());
        assert!(TokenCheck::new(None).check(request(None)).is_ok());
    }
}
