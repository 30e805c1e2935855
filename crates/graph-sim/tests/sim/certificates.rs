//! Client-assertion validation (graph-api.md §5): PS256 with `x5t#S256` against a
//! registered certificate; every other assertion refused the way Entra refuses it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use crate::common::{GRAPH_SCOPE, Sim, form, sim};

const CERT: &str = include_str!("../../fixtures/client-cert.pem");
const KEY: &str = include_str!("../../fixtures/client-key.pem");
const OTHER_CERT: &str = include_str!("../../fixtures/other-cert.pem");
const OTHER_KEY: &str = include_str!("../../fixtures/other-key-pkcs1.pem");
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn thumbprint(cert_pem: &str, sha1: bool) -> String {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let alg = if sha1 { &ring::digest::SHA1_FOR_LEGACY_USE_ONLY } else { &ring::digest::SHA256 };
    URL_SAFE_NO_PAD.encode(ring::digest::digest(alg, der.as_ref()).as_ref())
}

fn key(pem: &str) -> RsaKeyPair {
    match PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap() {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).unwrap(),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()).unwrap(),
        _ => panic!("RSA key expected"),
    }
}

fn sign(header: &Value, claims: &Value, key_pem: &str) -> String {
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let key = key(key_pem);
    let mut sig = vec![0; key.public().modulus_len()];
    let alg =
        if header["alg"] == "RS256" { &RSA_PKCS1_SHA256 as &dyn ring::signature::RsaEncoding } else { &RSA_PSS_SHA256 };
    key.sign(alg, &ring::rand::SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn claims(s: &Sim) -> Value {
    let t = now();
    json!({"aud": s.token_url(), "iss": s.config.client_id, "sub": s.config.client_id,
           "jti": uuid::Uuid::new_v4().to_string(), "nbf": t, "iat": t, "exp": t + 300})
}

fn ps256_header(cert: &str) -> Value {
    json!({"alg": "PS256", "typ": "JWT", "x5t#S256": thumbprint(cert, false)})
}

async fn present(s: &Sim, assertion: &str) -> (u16, Value) {
    let resp = s
        .post_token(form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &s.config.client_id),
            ("scope", GRAPH_SCOPE),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
        ]))
        .await;
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn aadsts(v: &Value) -> u64 {
    v["error_codes"][0].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn ps256_assertion_from_a_registered_certificate_gets_a_token() {
    let s = sim().await;
    let registered = s.admin.register_certificate(CERT).await.unwrap();
    assert_eq!(registered.thumbprint_s256, thumbprint(CERT, false));
    let (status, body) = present(&s, &sign(&ps256_header(CERT), &claims(&s), KEY)).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let url = s.url("/v1.0/users/delta?$select=id");
    let resp = s.http.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn rs256_assertion_with_sha1_thumbprint_is_also_accepted() {
    let s = sim().await;
    s.admin.register_certificate(CERT).await.unwrap();
    let header = json!({"alg": "RS256", "typ": "JWT", "x5t": thumbprint(CERT, true)});
    let (status, body) = present(&s, &sign(&header, &claims(&s), KEY)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn assertions_are_refused_like_entra_refuses_them() {
    let s = sim().await;
    // Nothing registered yet: the thumbprint is unknown.
    let (status, body) = present(&s, &sign(&ps256_header(CERT), &claims(&s), KEY)).await;
    assert_eq!((status, aadsts(&body)), (401, 700_027), "{body}");
    s.admin.register_certificate(CERT).await.unwrap();

    // Signed by another key while naming the registered certificate.
    let (status, body) = present(&s, &sign(&ps256_header(CERT), &claims(&s), OTHER_KEY)).await;
    assert_eq!((status, aadsts(&body)), (401, 700_027), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("signature"));

    // A certificate that is not registered.
    let (status, body) = present(&s, &sign(&ps256_header(OTHER_CERT), &claims(&s), OTHER_KEY)).await;
    assert_eq!((status, aadsts(&body)), (401, 700_027), "{body}");

    let mut c = claims(&s);
    c["aud"] = json!("https://login.microsoftonline.com/other/oauth2/v2.0/token");
    let (status, body) = present(&s, &sign(&ps256_header(CERT), &c, KEY)).await;
    assert_eq!((status, aadsts(&body)), (401, 700_212), "{body}");

    let mut c = claims(&s);
    c["iss"] = json!("someone-else");
    let (status, body) = present(&s, &sign(&ps256_header(CERT), &c, KEY)).await;
    assert_eq!((status, aadsts(&body)), (401, 700_021), "{body}");

    let mut c = claims(&s);
    c["exp"] = json!(now() - 3600);
    c["nbf"] = json!(now() - 4000);
    c["iat"] = json!(now() - 4000);
    let (status, body) = present(&s, &sign(&ps256_header(CERT), &c, KEY)).await;
    assert_eq!((status, aadsts(&body)), (401, 700_024), "{body}");

    let mut c = claims(&s);
    c["exp"] = json!(now() + 3600);
    let (status, body) = present(&s, &sign(&ps256_header(CERT), &c, KEY)).await;
    assert_eq!((status, aadsts(&body)), (401, 700_024), "lifetime over 10 min: {body}");

    // Tampered payload: the signature no longer matches.
    let good = sign(&ps256_header(CERT), &claims(&s), KEY);
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut c = claims(&s);
    c["jti"] = json!("replaced");
    parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
    let (status, body) = present(&s, &parts.join(".")).await;
    assert_eq!((status, aadsts(&body)), (401, 700_027), "{body}");

    let (status, body) = present(&s, "not-a-jwt").await;
    assert_eq!((status, aadsts(&body)), (400, 50_027), "{body}");
}
