//! TLS client settings shared by the Redis and PostgreSQL connections.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Returns a TLS client configuration that verifies servers against the CA
/// certificates of `ca_file` (PEM) or, without one, against the Mozilla root
/// certificates built into the binary (no system store is needed in the image).
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("CA file {} holds no certificate", path.display()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("CA file {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::client_config;

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let missing = client_config(Some(std::path::Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
        let empty = std::env::temp_dir().join(format!("pgnm-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "").unwrap();
        let error = client_config(Some(&empty)).unwrap_err();
        let _ = std::fs::remove_file(&empty);
        assert!(error.contains("no certificate"), "{error}");
        assert!(client_config(None).is_ok());
    }
}
