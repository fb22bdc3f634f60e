//! Loading and checking a client certificate: PEM (certificate + RSA key, PKCS#8 or PKCS#1) or
//! PKCS#12. Pure Rust (x509-parser, p12-keystore, ring). The operator uses the same checks, so a
//! Secret it reports valid is one the sidecar accepts.

use std::time::{SystemTime, UNIX_EPOCH};

use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
use ring::signature::{KeyPair, RsaKeyPair};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate file cannot be used. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("holds no certificate")]
    NoCertificate,
    #[error("holds no private key")]
    NoPrivateKey,
    #[error(
        "holds an encrypted PEM private key, which is not supported; use a PKCS#12 file with AZURE_CLIENT_CERTIFICATE_PASSWORD"
    )]
    EncryptedPem,
    #[error("is not valid PEM: {0}")]
    BadPem(String),
    #[error("is neither a PEM file (certificate and key) nor a PKCS#12 file")]
    UnknownFormat,
    #[error("is not a readable PKCS#12 file (wrong password?): {0}")]
    BadPkcs12(String),
    #[error("holds a certificate that cannot be parsed: {0}")]
    BadCertificate(String),
    #[error(
        "holds a private key that is not RSA, or is malformed (Entra ID certificate credentials need RSA): {0}"
    )]
    UnsupportedKey(String),
    #[error("holds a private key that matches none of its certificates")]
    KeyMismatch,
    #[error("holds a certificate that expired at {not_after} (unix {not_after_unix})")]
    Expired {
        not_after: String,
        not_after_unix: i64,
    },
    #[error("holds a certificate that is not valid before {not_before}")]
    NotYetValid { not_before: String },
}

/// A usable client certificate: the signing key, the certificate and its chain.
pub struct ClientCertificate {
    key: RsaKeyPair,
    /// Leaf first, then the rest of the chain as found in the file.
    chain: Vec<CertificateDer<'static>>,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// RFC 3339 expiry, for logs and status.
    pub not_after: String,
    pub subject: String,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("thumbprint_sha256", &self.thumbprint_sha256_hex())
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// Parses `content` (PEM, or PKCS#12 with `password`) and checks that the key matches a
    /// certificate. Expiry is checked separately ([`ClientCertificate::check_validity`]).
    pub fn parse(content: &[u8], password: Option<&str>) -> Result<Self, CertificateError> {
        // PKCS#12 is DER (a SEQUENCE, 0x30); anything else is read as PEM, which may carry text
        // such as OpenSSL's "Bag Attributes" before its sections.
        let (key_der, certs) = if content.first() == Some(&0x30) {
            read_pkcs12(content, password.unwrap_or(""))?
        } else {
            read_pem(content)?
        };
        let key = match &key_der {
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => return Err(CertificateError::UnsupportedKey("an EC (SEC1) key".into())),
        }
        .map_err(|e| CertificateError::UnsupportedKey(e.to_string()))?;
        let public_key = key.public_key().as_ref().to_vec();

        let mut leaf = None;
        for (index, cert) in certs.iter().enumerate() {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert)
                .map_err(|e| CertificateError::BadCertificate(e.to_string()))?;
            if parsed.public_key().subject_public_key.data.as_ref() == public_key.as_slice() {
                leaf = Some((
                    index,
                    parsed.validity().not_before.timestamp(),
                    parsed.validity().not_after.timestamp(),
                    parsed.validity().not_after.to_datetime(),
                    parsed.subject().to_string(),
                ));
                break;
            }
        }
        let Some((index, not_before_unix, not_after_unix, not_after, subject)) = leaf else {
            return Err(CertificateError::KeyMismatch);
        };
        let mut chain = certs;
        let leaf_cert = chain.remove(index);
        chain.insert(0, leaf_cert);
        Ok(Self {
            key,
            chain,
            not_before_unix,
            not_after_unix,
            not_after: rfc3339(not_after),
            subject,
        })
    }

    /// Fails when the certificate is expired or not yet valid at `now` (Unix seconds).
    pub fn check_validity(&self, now: i64) -> Result<(), CertificateError> {
        if now >= self.not_after_unix {
            return Err(CertificateError::Expired {
                not_after: self.not_after.clone(),
                not_after_unix: self.not_after_unix,
            });
        }
        if now < self.not_before_unix {
            return Err(CertificateError::NotYetValid {
                not_before: self.not_before_unix.to_string(),
            });
        }
        Ok(())
    }

    pub fn leaf_der(&self) -> &[u8] {
        &self.chain[0]
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn key(&self) -> &RsaKeyPair {
        &self.key
    }

    /// SHA-256 of the leaf certificate (the `x5t#S256` header, in base64url).
    pub fn thumbprint_sha256(&self) -> Vec<u8> {
        digest(&SHA256, self.leaf_der()).as_ref().to_vec()
    }

    /// SHA-1 of the leaf certificate (the legacy `x5t` header, and the portal's thumbprint).
    pub fn thumbprint_sha1(&self) -> Vec<u8> {
        digest(&SHA1_FOR_LEGACY_USE_ONLY, self.leaf_der())
            .as_ref()
            .to_vec()
    }

    pub fn thumbprint_sha256_hex(&self) -> String {
        hex(&self.thumbprint_sha256())
    }

    /// Upper-case hex SHA-1 thumbprint, as the Azure portal shows it.
    pub fn thumbprint_sha1_hex(&self) -> String {
        hex(&self.thumbprint_sha1()).to_ascii_uppercase()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn rfc3339(time: time::OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

/// Current time in Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

type KeyAndCerts = (PrivateKeyDer<'static>, Vec<CertificateDer<'static>>);

fn read_pem(content: &[u8]) -> Result<KeyAndCerts, CertificateError> {
    let mut key = None;
    let mut certs = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(content) {
        let (kind, der) = item.map_err(|e| CertificateError::BadPem(e.to_string()))?;
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
                if key.is_none() =>
            {
                key = PrivateKeyDer::from_pem(kind, der);
            }
            _ => {}
        }
    }
    // The PEM reader skips sections it does not know, such as encrypted keys: say why instead.
    if key.is_none() && contains(content, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(CertificateError::EncryptedPem);
    }
    if key.is_none() && certs.is_empty() {
        return Err(CertificateError::UnknownFormat);
    }
    let key = key.ok_or(CertificateError::NoPrivateKey)?;
    if certs.is_empty() {
        return Err(CertificateError::NoCertificate);
    }
    Ok((key, certs))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn read_pkcs12(content: &[u8], password: &str) -> Result<KeyAndCerts, CertificateError> {
    let store = p12_keystore::KeyStore::from_pkcs12(
        content,
        password,
        p12_keystore::Pkcs12ImportPolicy::Relaxed,
    )
    .map_err(|e| CertificateError::BadPkcs12(e.to_string()))?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or(CertificateError::NoPrivateKey)?;
    let key = PrivateKeyDer::Pkcs8(chain.key().as_der().to_vec().into());
    let certs: Vec<CertificateDer<'static>> = chain
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    if certs.is_empty() {
        return Err(CertificateError::NoCertificate);
    }
    Ok((key, certs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aoai_e2e::ca::{fixture_key_pem, fixtures_dir, self_signed_client_cert};

    const YEAR: i64 = 365 * 24 * 3600;

    fn cert(key: &str) -> String {
        self_signed_client_cert(&fixture_key_pem(key), unix_now() - 60, unix_now() + YEAR)
    }

    #[test]
    fn pem_in_either_order_and_key_format() {
        let a = cert("client-a");
        for content in [
            format!("{a}{}", fixture_key_pem("client-a")),
            format!("{}{a}", fixture_key_pem("client-a-pkcs1")),
            format!(
                "Bag Attributes\n    localKeyID: 01\n{a}{}",
                fixture_key_pem("client-a")
            ),
        ] {
            let parsed = ClientCertificate::parse(content.as_bytes(), None).unwrap();
            assert!(parsed.check_validity(unix_now()).is_ok());
            assert_eq!(parsed.thumbprint_sha256().len(), 32);
            assert_eq!(parsed.thumbprint_sha1_hex().len(), 40);
            assert!(parsed.subject.contains("aoai-proxy test client"));
            assert!(!format!("{parsed:?}").contains("PRIVATE"));
        }
    }

    #[test]
    fn leaf_is_the_certificate_matching_the_key() {
        let (a, b) = (cert("client-a"), cert("client-b"));
        let content = format!("{a}{b}{}", fixture_key_pem("client-b"));
        let parsed = ClientCertificate::parse(content.as_bytes(), None).unwrap();
        let b_der = CertificateDer::from_pem_slice(b.as_bytes()).unwrap();
        assert_eq!(parsed.leaf_der(), b_der.as_ref());
        assert_eq!(parsed.chain().len(), 2);
    }

    #[test]
    fn pkcs12_with_password() {
        let content = std::fs::read(fixtures_dir().join("keys/client-a.p12")).unwrap();
        let parsed = ClientCertificate::parse(&content, Some("test-password")).unwrap();
        assert!(parsed.subject.contains("aoai-proxy-test-p12"));
        let e = ClientCertificate::parse(&content, Some("wrong")).unwrap_err();
        assert!(matches!(e, CertificateError::BadPkcs12(_)), "{e}");
    }

    #[test]
    fn unusable_files() {
        let a = cert("client-a");
        let cases: Vec<(String, CertificateError)> = vec![
            (
                format!("{a}{}", fixture_key_pem("client-b")),
                CertificateError::KeyMismatch,
            ),
            (a.clone(), CertificateError::NoPrivateKey),
            (fixture_key_pem("client-a"), CertificateError::NoCertificate),
            ("garbage".into(), CertificateError::UnknownFormat),
            (String::new(), CertificateError::UnknownFormat),
            (
                format!(
                    "{a}-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
                ),
                CertificateError::EncryptedPem,
            ),
        ];
        for (content, expected) in cases {
            assert_eq!(
                ClientCertificate::parse(content.as_bytes(), None).unwrap_err(),
                expected
            );
        }
        // An EC key (Entra ID certificate credentials need RSA).
        let ec = rcgen::KeyPair::generate().unwrap();
        let ec_cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&ec)
            .unwrap();
        let content = format!("{}{}", ec_cert.pem(), ec.serialize_pem());
        assert!(matches!(
            ClientCertificate::parse(content.as_bytes(), None).unwrap_err(),
            CertificateError::UnsupportedKey(_)
        ));
        // Truncated DER is not a panic.
        assert!(ClientCertificate::parse(&[0x30, 0x82, 0xff], None).is_err());
    }

    #[test]
    fn validity_window() {
        let expired = self_signed_client_cert(
            &fixture_key_pem("client-a"),
            unix_now() - 2 * YEAR,
            unix_now() - YEAR,
        );
        let parsed = ClientCertificate::parse(
            format!("{expired}{}", fixture_key_pem("client-a")).as_bytes(),
            None,
        )
        .unwrap();
        let e = parsed.check_validity(unix_now()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("holds a certificate that expired at "),
            "{e}"
        );
        let future = self_signed_client_cert(
            &fixture_key_pem("client-a"),
            unix_now() + YEAR,
            unix_now() + 2 * YEAR,
        );
        let parsed = ClientCertificate::parse(
            format!("{future}{}", fixture_key_pem("client-a")).as_bytes(),
            None,
        )
        .unwrap();
        assert!(matches!(
            parsed.check_validity(unix_now()),
            Err(CertificateError::NotYetValid { .. })
        ));
    }
}
