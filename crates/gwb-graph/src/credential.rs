//! The application's credential: a client secret, or a certificate whose private key
//! signs a short-lived JWT client assertion (graph-api.md §5).

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gwb_runtime::secret::{Secret, read_secret_file};
use rand::Rng;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PSS_SHA256, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

use crate::GraphError;

/// Lifetime of one assertion. Entra documents "5–10 minutes"; a fresh one is signed
/// for every token request, so the short end costs nothing.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

pub enum Credential {
    Secret(Secret),
    Certificate(Box<CertificateCredential>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Secret(_) => f.write_str("Credential::Secret(<redacted>)"),
            Credential::Certificate(c) => write!(f, "Credential::Certificate({c:?})"),
        }
    }
}

/// A certificate credential: the certificate's SHA-256 thumbprint (sent as
/// `x5t#S256`) and the RSA key that signs assertions.
pub struct CertificateCredential {
    thumbprint_s256: String,
    key: RsaKeyPair,
}

// The key never appears in Debug output; the thumbprint is public (it is in the
// app registration) and identifies which certificate is in use.
impl fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("x5t#S256", &self.thumbprint_s256)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertificateCredential {
    /// Reads the certificate (PEM) and the private key (PEM, PKCS#8 or PKCS#1 RSA). The
    /// key file is a secret: it is refused when group or others can read it.
    pub fn load(certificate_file: &Path, key_file: &Path) -> Result<Self, GraphError> {
        let certificate = std::fs::read(certificate_file).map_err(|e| {
            GraphError::Config(format!(
                "graph.client_certificate_file: cannot read {}: {e}",
                certificate_file.display()
            ))
        })?;
        let key = read_secret_file("graph.client_private_key_file", key_file)
            .map_err(|e| GraphError::Config(e.to_string()))?;
        Self::from_pem(&certificate, &key)
    }

    pub fn from_pem(certificate_pem: &[u8], key_pem: &Secret) -> Result<Self, GraphError> {
        let certificate = CertificateDer::from_pem_slice(certificate_pem)
            .map_err(|e| GraphError::Config(format!("graph.client_certificate_file holds no PEM certificate: {e}")))?;
        // The parse error text never includes key material, only its kind.
        let key = match PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes()) {
            Ok(PrivateKeyDer::Pkcs8(der)) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            Ok(PrivateKeyDer::Pkcs1(der)) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            Ok(_) => {
                return Err(GraphError::Config(
                    "graph.client_private_key_file: only RSA keys can sign PS256 assertions".into(),
                ));
            }
            Err(e) => {
                return Err(GraphError::Config(format!("graph.client_private_key_file holds no PEM private key: {e}")));
            }
        }
        .map_err(|e| GraphError::Config(format!("graph.client_private_key_file: unusable RSA key ({e})")))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, certificate.as_ref());
        Ok(CertificateCredential { thumbprint_s256: URL_SAFE_NO_PAD.encode(digest.as_ref()), key })
    }

    /// `x5t#S256` of the certificate: base64url SHA-256 of its DER encoding.
    pub fn thumbprint_s256(&self) -> &str {
        &self.thumbprint_s256
    }

    /// A PS256-signed client assertion for `audience` (the token endpoint URL).
    pub fn assertion(&self, client_id: &str, audience: &str, now: SystemTime) -> Result<Secret, GraphError> {
        let issued = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let header = json!({"alg": "PS256", "typ": "JWT", "x5t#S256": self.thumbprint_s256});
        let claims = json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": jti(),
            "nbf": issued,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key.sign(&RSA_PSS_SHA256, &SystemRandom::new(), signing_input.as_bytes(), &mut signature).map_err(
            |_| GraphError::Config("graph.client_private_key_file: signing the client assertion failed".into()),
        )?;
        Ok(Secret::new(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))))
    }
}

/// A random (version 4) UUID, the form Entra's examples use for `jti`.
fn jti() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = include_str!("../../graph-sim/fixtures/client-cert.pem");
    const KEY: &str = include_str!("../../graph-sim/fixtures/client-key.pem");
    const PKCS1_KEY: &str = include_str!("../../graph-sim/fixtures/other-key-pkcs1.pem");

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn assertion_is_ps256_with_sha256_thumbprint_and_short_lifetime() {
        let credential = CertificateCredential::from_pem(CERT.as_bytes(), &Secret::new(KEY)).unwrap();
        let der = CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap();
        let expected = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der.as_ref()).as_ref());
        assert_eq!(credential.thumbprint_s256(), expected);
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let jwt = credential.assertion("app", "https://login/t/oauth2/v2.0/token", now).unwrap();
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode(parts[0]);
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["x5t#S256"], expected.as_str());
        let claims = decode(parts[1]);
        assert_eq!(claims["aud"], "https://login/t/oauth2/v2.0/token");
        assert_eq!((claims["iss"].as_str(), claims["sub"].as_str()), (Some("app"), Some("app")));
        assert_eq!(claims["nbf"], 1_700_000_000u64);
        assert!(claims["exp"].as_u64().unwrap() - claims["nbf"].as_u64().unwrap() <= 600);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
        let key = RsaKeyPair::from_pkcs8(PrivateKeyDer::from_pem_slice(KEY.as_bytes()).unwrap().secret_der()).unwrap();
        let public =
            ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PSS_2048_8192_SHA256, key.public().as_ref());
        let signed = format!("{}.{}", parts[0], parts[1]);
        public.verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
    }

    #[test]
    fn pkcs1_keys_load_and_debug_hides_the_key() {
        let credential = CertificateCredential::from_pem(CERT.as_bytes(), &Secret::new(PKCS1_KEY)).unwrap();
        let shown = format!("{:?}", Credential::Certificate(Box::new(credential)));
        assert!(shown.contains("redacted") && !shown.contains("PRIVATE"));
        assert!(CertificateCredential::from_pem(b"junk", &Secret::new(KEY)).is_err());
        assert!(CertificateCredential::from_pem(CERT.as_bytes(), &Secret::new("junk")).is_err());
    }
}
