//! Outbound TLS: the system's root certificates plus the PEM bundle named by `SSL_CERT_FILE`.
//!
//! The usual convention (OpenSSL, Go) lets `SSL_CERT_FILE` replace the system store; the proxy adds
//! it instead, so that a private CA can be trusted without losing the public roots that Azure
//! endpoints need. The bundle is re-read when it changes (a rotated ConfigMap or Secret), for the
//! connections opened after that. Crypto is rustls with ring: no OpenSSL.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aoai_runtime::crypto_provider())
}

fn verifier(roots: RootCertStore) -> Arc<WebPkiServerVerifier> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .expect("a root store with at least one root, or an empty one, builds a verifier")
}

/// How often `SSL_CERT_FILE` is looked at for changes.
pub const TRUST_FILE_POLL: Duration = Duration::from_secs(2);

/// The server-certificate check of every outbound connection: WebPKI against the current roots,
/// which [`Trust::watch`] replaces when `SSL_CERT_FILE` changes.
#[derive(Debug)]
pub struct Trust {
    current: ArcSwap<WebPkiServerVerifier>,
    extra: Option<PathBuf>,
}

impl Trust {
    /// The system roots plus `extra`; an unreadable or empty `extra` is a start-up error.
    pub fn load(extra: Option<&Path>) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            current: ArcSwap::new(verifier(root_store(extra)?)),
            extra: extra.map(Path::to_path_buf),
        }))
    }

    /// Re-reads `SSL_CERT_FILE` every [`TRUST_FILE_POLL`]; a new bundle applies to the
    /// connections opened after it, and one that does not parse is logged and ignored (the roots
    /// read before stay).
    pub async fn watch(self: Arc<Self>) {
        let Some(path) = self.extra.clone() else {
            return;
        };
        crate::file_watch::watch(
            "SSL_CERT_FILE",
            TRUST_FILE_POLL,
            std::fs::read(&path).ok(),
            || std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display())),
            |_| {
                let roots = root_store(Some(&path)).map_err(|e| e.to_string())?;
                self.current.store(verifier(roots));
                tracing::info!(bundle = %path.display(), "SSL_CERT_FILE changed; trusted roots reloaded");
                Ok(())
            },
        )
        .await
    }
}

impl ServerCertVerifier for Trust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current.load().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }
}

/// A rustls client configuration that checks servers with `trust`, with the ring provider.
pub fn client_config(trust: Arc<Trust>) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the crypto provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(trust)
        .with_no_client_auth()
}
