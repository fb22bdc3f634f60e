//! Outbound TLS: the system's root certificates plus the PEM bundle named by `SSL_CERT_FILE`.
//!
//! The usual convention (OpenSSL, Go) lets `SSL_CERT_FILE` replace the system store; the proxy adds
//! it instead, so that a private CA can be trusted without losing the public roots that Azure
//! endpoints need. Crypto is rustls with ring: no OpenSSL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// System CA bundles, the first that exists is used (Debian/Ubuntu/Alpine/distroless, RHEL/Fedora,
/// openSUSE, macOS/BSD).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("SSL_CERT_FILE: cannot read {path}: {message}")]
    ExtraRoots { path: PathBuf, message: String },
    #[error("SSL_CERT_FILE: {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
}

fn read_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// The trusted roots: system bundle plus `extra` (from `SSL_CERT_FILE`).
pub fn root_store(extra: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if let Some(system) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.exists()) {
        match read_bundle(system) {
            Ok(certs) => {
                let (added, ignored) = roots.add_parsable_certificates(certs);
                tracing::debug!(bundle = %system.display(), added, ignored, "system roots loaded");
            }
            Err(e) => tracing::warn!(bundle = %system.display(), "cannot read system roots: {e}"),
        }
    }
    if let Some(path) = extra {
        let certs = read_bundle(path).map_err(|message| TlsError::ExtraRoots {
            path: path.to_path_buf(),
            message,
        })?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::NoCertificate {
                path: path.to_path_buf(),
            });
        }
        tracing::debug!(bundle = %path.display(), added, "extra roots loaded");
    }
    if roots.is_empty() {
        tracing::warn!(
            "no trusted root certificate found (no system bundle, no SSL_CERT_FILE): https upstreams will fail"
        );
    }
    Ok(roots)
}

/// A rustls client configuration over `roots`, with the ring provider.
pub fn client_config(roots: RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
