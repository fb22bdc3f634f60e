//! A throw-away certificate authority for loopback HTTPS, and client certificates for the
//! certificate credential (RSA keys from `tests/fixtures/keys`, since ring cannot generate RSA).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA whose root is written to a temporary PEM file (for `SSL_CERT_FILE`).
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    dir: tempfile::TempDir,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "aoai-proxy test CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = params.self_signed(&key).expect("self-sign CA");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), root.pem()).expect("write ca.pem");
        Self {
            issuer: Issuer::new(params, key),
            root: root.der().clone(),
            dir,
        }
    }

    /// PEM file holding the CA certificate.
    pub fn root_pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root
    }

    fn issue_server_cert(&self) -> (rcgen::Certificate, KeyPair) {
        self.issue_server_cert_for(&[])
    }

    /// A server certificate for 127.0.0.1, localhost, the test node's bridge gateway (where the
    /// node tests serve their mocks to pods) and `more` names or addresses.
    fn issue_server_cert_for(&self, more: &[&str]) -> (rcgen::Certificate, KeyPair) {
        self.sign_server_cert(KeyPair::generate().expect("generate server key"), more)
    }

    fn sign_server_cert(&self, key: KeyPair, more: &[&str]) -> (rcgen::Certificate, KeyPair) {
        let mut names = vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            crate::node::GATEWAY.to_string(),
        ];
        names.extend(more.iter().map(|n| n.to_string()));
        let params = CertificateParams::new(names).expect("server params");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign server cert");
        (cert, key)
    }

    /// A server certificate for 127.0.0.1, localhost and the node gateway, with its key.
    pub fn server_cert(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        as_der(self.issue_server_cert())
    }

    /// The same with an RSA key (the fixture key `client-b`), as Azure's endpoints present: TLS 1.3
    /// then signs the handshake with RSA-PSS, and TLS 1.2 takes the ECDHE-RSA suites.
    pub fn server_cert_rsa(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::from_pem(&fixture_key_pem("client-b")).expect("PKCS#8 RSA fixture key");
        as_der(self.sign_server_cert(key, &[]))
    }

    /// A server certificate for 127.0.0.1 and localhost as PEM: (certificate, PKCS#8 key).
    pub fn server_cert_pem(&self) -> (String, String) {
        self.server_cert_pem_for(&[])
    }

    /// The same, valid for `more` names and addresses too.
    pub fn server_cert_pem_for(&self, more: &[&str]) -> (String, String) {
        let (cert, key) = self.issue_server_cert_for(more);
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate for TLS client authentication (Kubernetes reads the user from CN and
    /// the groups from O) as PEM: (certificate, PKCS#8 key).
    pub fn client_cert_pem(&self, common_name: &str, organization: &str) -> (String, String) {
        let key = KeyPair::generate().expect("generate client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        name.push(DnType::OrganizationName, organization);
        params.distinguished_name = name;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign client cert");
        (cert.pem(), key.serialize_pem())
    }

    /// A rustls server configuration for loopback, offering h2 and http/1.1.
    pub fn server_config(&self) -> rustls::ServerConfig {
        let (chain, key) = self.server_cert();
        server_config(chain, key)
    }

    /// Same, HTTP/1.1 only.
    pub fn server_config_http1(&self) -> rustls::ServerConfig {
        let mut config = self.server_config();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }
}

fn as_der(
    (cert, key): (rcgen::Certificate, KeyPair),
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// A rustls server configuration (the project's crypto provider) serving `chain` with `key`,
/// offering h2 and http/1.1.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> rustls::ServerConfig {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(aoai_runtime::crypto_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// A rustls client configuration (the project's crypto provider) trusting only `roots`.
pub fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(aoai_runtime::crypto_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A `kubernetes.io/tls` Secret `namespace/name` holding `certificate` and the fixture key
/// `key`, as `kubectl create secret tls` makes it.
pub fn tls_secret(name: &str, namespace: &str, certificate: &str, key: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"tls.crt": certificate, "tls.key": fixture_key_pem(key)},
    })
}

/// Folder of the fixture keys.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A fixture RSA key in PEM: `client-a`, `client-b` (PKCS#8), `client-a-pkcs1` (client-a as PKCS#1).
pub fn fixture_key_pem(name: &str) -> String {
    std::fs::read_to_string(fixtures_dir().join("keys").join(format!("{name}.key.pem")))
        .expect("fixture key")
}

/// The `client-a` fixture key's self-signed certificate, valid from an hour ago for 90 days: a
/// certificate the operator finds valid and not expiring soon. Returns the certificate PEM.
pub fn valid_client_cert() -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    self_signed_client_cert(&fixture_key_pem("client-a"), now - 3600, now + 90 * 86_400)
}

/// A self-signed certificate (as Entra ID app registrations use) for a fixture key, valid from
/// `not_before` to `not_after` (Unix seconds). Returns the certificate PEM.
pub fn self_signed_client_cert(key_pem: &str, not_before: i64, not_after: i64) -> String {
    let key = KeyPair::from_pem(key_pem).expect("PKCS#8 RSA fixture key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "aoai-proxy test client");
    params.distinguished_name = name;
    params.not_before = time_from_unix(not_before);
    params.not_after = time_from_unix(not_after);
    params
        .self_signed(&key)
        .expect("self-sign client cert")
        .pem()
}

fn time_from_unix(seconds: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(seconds).expect("valid timestamp")
}
