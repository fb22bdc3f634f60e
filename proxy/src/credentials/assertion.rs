//! The client assertion for certificate credentials: a JWT signed RS256 with the certificate's
//! key, as Entra ID specifies (`x5t#S256` and `x5t` headers, `aud` = token endpoint, `iss` = `sub`
//! = client id, unique `jti`, ten-minute lifetime; optional `x5c` chain for subject-name/issuer
//! authentication). Signing is ring's RSA PKCS#1 v1.5 with SHA-256.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::RSA_PKCS1_SHA256;

use super::certificate::ClientCertificate;

/// How long an assertion is valid: short, since it is used once, right away.
pub const ASSERTION_LIFETIME_SECS: i64 = 600;

/// Builds and signs a client assertion for `client_id` towards `token_endpoint`, at `now`
/// (Unix seconds).
pub fn client_assertion(
    certificate: &ClientCertificate,
    client_id: &str,
    token_endpoint: &str,
    send_chain: bool,
    now: i64,
) -> Result<String, ring::error::Unspecified> {
    let rng = SystemRandom::new();
    let mut header = serde_json::json!({
        "alg": "RS256",
        "typ": "JWT",
        "x5t": URL_SAFE_NO_PAD.encode(certificate.thumbprint_sha1()),
        "x5t#S256": URL_SAFE_NO_PAD.encode(certificate.thumbprint_sha256()),
    });
    if send_chain {
        header["x5c"] = certificate
            .chain()
            .iter()
            .map(|der| serde_json::Value::String(STANDARD.encode(der)))
            .collect();
    }
    let claims = serde_json::json!({
        "aud": token_endpoint,
        "iss": client_id,
        "sub": client_id,
        "jti": jti(&rng)?,
        "iat": now,
        "nbf": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = certificate.key();
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &rng,
        signing_input.as_bytes(),
        &mut signature,
    )?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// A random UUID (version 4) for the `jti` claim.
fn jti(rng: &SystemRandom) -> Result<String, ring::error::Unspecified> {
    let mut b = [0u8; 16];
    rng.fill(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::certificate::{ClientCertificate, unix_now};
    use aoai_e2e::ca::{fixture_key_pem, self_signed_client_cert};
    use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn assertion_is_a_verifiable_rs256_jwt_with_entra_claims() {
        let key = fixture_key_pem("client-a");
        let cert_pem = self_signed_client_cert(&key, unix_now() - 60, unix_now() + 3600);
        let cert = ClientCertificate::parse(format!("{cert_pem}{key}").as_bytes(), None).unwrap();
        let endpoint = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
        let jwt = client_assertion(&cert, "client-1", endpoint, true, 1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode(parts[0]);
        let claims = decode(parts[1]);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(
            header["x5t#S256"],
            URL_SAFE_NO_PAD.encode(cert.thumbprint_sha256())
        );
        assert_eq!(
            header["x5t"],
            URL_SAFE_NO_PAD.encode(cert.thumbprint_sha1())
        );
        assert_eq!(header["x5c"][0], STANDARD.encode(cert.leaf_der()));
        assert_eq!(claims["aud"], endpoint);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["exp"], 1_700_000_000 + ASSERTION_LIFETIME_SECS);
        assert_eq!(claims["nbf"], 1_700_000_000);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 36);

        let (_, parsed) = x509_parser::parse_x509_certificate(cert.leaf_der()).unwrap();
        let public_key = parsed.public_key().subject_public_key.data.to_vec();
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("signature verifies with the certificate's key");

        let again = client_assertion(&cert, "client-1", endpoint, false, 1_700_000_000).unwrap();
        assert_ne!(
            decode(again.split('.').nth(1).unwrap())["jti"],
            claims["jti"],
            "jti must be unique"
        );
        assert!(
            decode(again.split('.').next().unwrap())
                .get("x5c")
                .is_none()
        );
    }
}
