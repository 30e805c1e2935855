//! Certificate credentials: registered certificates and the validation of signed JWT
//! client assertions, as Entra's token endpoint does it (graph-api.md §5).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Entra documents assertions "valid for 5–10 minutes"; longer ones are refused here
/// so that a client signing long-lived assertions notices in tests.
const MAX_LIFETIME_SECS: u64 = 600;
/// Clock skew tolerated on `nbf` and `exp`, as token validators commonly allow.
const SKEW_SECS: u64 = 300;

/// A certificate registered on the app (`keyCredentials`), identified by its SHA-256
/// (`x5t#S256`) and SHA-1 (`x5t`) thumbprints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredCertificate {
    pub thumbprint_s256: String,
    pub thumbprint_sha1: String,
    #[serde(skip)]
    der: Vec<u8>,
}

impl RegisteredCertificate {
    /// Parses one PEM certificate; it must carry a key webpki can verify with.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("no PEM certificate: {e}"))?;
        webpki::EndEntityCert::try_from(&der).map_err(|e| format!("not a usable X.509 certificate: {e}"))?;
        let s256 = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der.as_ref());
        Ok(RegisteredCertificate {
            thumbprint_s256: URL_SAFE_NO_PAD.encode(s256.as_ref()),
            thumbprint_sha1: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
            der: der.as_ref().to_vec(),
        })
    }
}

/// Why an assertion was refused, with the AADSTS code Entra uses for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: u32,
    /// `invalid_request` (400) for a token that is not a JWT, else `invalid_client` (401).
    pub malformed: bool,
    pub description: String,
}

fn refuse(code: u32, description: impl Into<String>) -> Refusal {
    Refusal { code, malformed: false, description: description.into() }
}

fn malformed(description: impl Into<String>) -> Refusal {
    Refusal {
        code: 50_027,
        malformed: true,
        description: format!("JWT token is invalid or malformed. {}", description.into()),
    }
}

fn json_part(part: &str, what: &str) -> Result<Value, Refusal> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| malformed(format!("The {what} is not base64url.")))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| malformed(format!("The {what} is not JSON.")))?;
    if value.is_object() { Ok(value) } else { Err(malformed(format!("The {what} is not a JSON object."))) }
}

fn number(claims: &Value, name: &str) -> Result<u64, Refusal> {
    claims
        .get(name)
        .and_then(Value::as_u64)
        .ok_or_else(|| malformed(format!("The '{name}' claim is missing or not a number.")))
}

/// Validates `jwt` for `client_id`: header (`alg` PS256 with `x5t#S256`, or RS256 with
/// `x5t`), a registered certificate, its signature, `aud` among `audiences`,
/// `iss` = `sub` = the client, `jti`, and `nbf`/`exp` around `now_secs`.
pub fn validate(
    jwt: &str,
    client_id: &str,
    audiences: &[String],
    certificates: &[RegisteredCertificate],
    now_secs: u64,
) -> Result<(), Refusal> {
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("A JWS has three dot-separated parts."));
    };
    let header = json_part(h, "header")?;
    let claims = json_part(c, "payload")?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let (thumbprint, algorithm): (_, &dyn rustls_pki_types::SignatureVerificationAlgorithm) = match alg {
        "PS256" => (header.get("x5t#S256").and_then(Value::as_str), webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY),
        "RS256" => (header.get("x5t").and_then(Value::as_str), webpki::ring::RSA_PKCS1_2048_8192_SHA256),
        other => {
            return Err(malformed(format!("The signing algorithm '{other}' is not supported for client assertions.")));
        }
    };
    let thumbprint = thumbprint.ok_or_else(|| {
        refuse(700_027, "Client assertion contains no certificate thumbprint ('x5t#S256' for PS256, 'x5t' for RS256).")
    })?;
    let registered = certificates
        .iter()
        .find(|cert| match alg {
            "PS256" => cert.thumbprint_s256 == thumbprint,
            _ => cert.thumbprint_sha1 == thumbprint,
        })
        .ok_or_else(|| {
            refuse(
                700_027,
                format!(
                    "Client assertion failed signature validation. The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}']"
                ),
            )
        })?;
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| {
        refuse(700_027, "Client assertion failed signature validation. [Reason - The signature is not base64url.]")
    })?;
    let der = CertificateDer::from(registered.der.as_slice());
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|_| refuse(700_027, "The registered certificate cannot be used."))?;
    let signed = &jwt[..h.len() + 1 + c.len()];
    cert.verify_signature(algorithm, signed.as_bytes(), &signature)
        .map_err(|_| {
            refuse(
                700_027,
                "Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value.]",
            )
        })?;
    let claim = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or("");
    if claim("iss") != client_id || claim("sub") != client_id {
        return Err(refuse(700_021, "Client assertion application identifier doesn't match 'client_id' parameter."));
    }
    if !audiences.iter().any(|a| a.eq_ignore_ascii_case(claim("aud"))) {
        return Err(refuse(
            700_212,
            format!("The audience '{}' of the client assertion is not this token endpoint.", claim("aud")),
        ));
    }
    if claim("jti").is_empty() {
        return Err(malformed("The 'jti' claim is missing."));
    }
    let exp = number(&claims, "exp")?;
    let nbf = claims.get("nbf").and_then(Value::as_u64).unwrap_or(0);
    let start = claims.get("iat").and_then(Value::as_u64).unwrap_or(nbf).max(nbf);
    if exp + SKEW_SECS < now_secs || nbf > now_secs + SKEW_SECS {
        return Err(refuse(700_024, "Client assertion is not within its valid time range."));
    }
    if exp.saturating_sub(start) > MAX_LIFETIME_SECS {
        return Err(refuse(
            700_024,
            format!(
                "Client assertion is valid for {} s; graph-sim accepts at most {MAX_LIFETIME_SECS} s.",
                exp.saturating_sub(start)
            ),
        ));
    }
    Ok(())
}
