use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::error::DirectoryError;

/// A client configuration that trusts only the CA certificates in `ca_file` and
/// verifies the server's name or IP address against them. There is deliberately no way
/// to switch verification off.
pub(crate) fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, DirectoryError> {
    let shown = ca_file.display();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| DirectoryError::permanent(format!("cannot read CA file {shown}: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DirectoryError::permanent(format!("bad PEM in CA file {shown}: {e}")))?;
    if certs.is_empty() {
        return Err(DirectoryError::permanent(format!("CA file {shown} holds no certificate")));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| DirectoryError::permanent(format!("unusable CA certificate in {shown}: {e}")))?;
    }
    // The provider is chosen explicitly so a second rustls backend elsewhere in the
    // process cannot make the choice ambiguous.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DirectoryError::permanent(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
