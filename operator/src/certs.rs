//! The webhook's TLS certificate: loaded from files (cert-manager, or a Secret the chart mounts)
//! and reloaded when they change, or self-managed: the leader keeps a CA and a serving
//! certificate in a Secret, rotates them before they expire, and writes the CA bundle into the
//! MutatingWebhookConfiguration; every replica serves the certificate the Secret holds.
//!
//! Issuing and the rotation decision are pure functions of (Secret data, now).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Error};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Secret keys.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

const DAY: i64 = 86_400;
/// Lifetimes and how long before expiry each is replaced.
const CA_LIFETIME: i64 = 10 * 365 * DAY;
const CA_RENEW_BEFORE: i64 = 365 * DAY;
const SERVING_LIFETIME: i64 = 365 * DAY;
const SERVING_RENEW_BEFORE: i64 = 30 * DAY;
const CA_NAME: &str = "aoai-operator webhook CA";

/// The certificate the webhook presents, swapped atomically when it changes.
#[derive(Debug, Default)]
pub struct ServingCert {
    current: ArcSwapOption<CertifiedKey>,
    /// The PEM last loaded, to skip reloading what has not changed.
    loaded: ArcSwapOption<(String, String)>,
}

impl ServingCert {
    /// Installs `cert_pem` (chain) and `key_pem`; a no-op when they are what is served already.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<bool, String> {
        if let Some(loaded) = self.loaded.load_full()
            && loaded.0 == cert_pem
            && loaded.1 == key_pem
        {
            return Ok(false);
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the certificate is not PEM: {e}"))?;
        if chain.is_empty() {
            return Err("no certificate found".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("the private key is not PEM: {e}"))?;
        let signing_key = aoai_runtime::crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("unsupported private key: {e}"))?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified
            .keys_match()
            .map_err(|e| format!("the key does not match the certificate: {e}"))?;
        self.current.store(Some(Arc::new(certified)));
        self.loaded
            .store(Some(Arc::new((cert_pem.to_string(), key_pem.to_string()))));
        Ok(true)
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

/// A rustls server configuration presenting `cert` (h2 and http/1.1).
pub fn server_config(cert: Arc<ServingCert>) -> Arc<rustls::ServerConfig> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(aoai_runtime::crypto_provider()))
            .with_safe_default_protocol_versions()
            .expect("the crypto provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Reloads the certificate and key files every `every` (cert-manager and kubelet rotate them in
/// place); a bad pair is logged and the previous one kept.
pub async fn watch_files(
    cert: Arc<ServingCert>,
    cert_path: PathBuf,
    key_path: PathBuf,
    every: Duration,
) {
    let read = || {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        Ok((read(&cert_path)?, read(&key_path)?))
    };
    // Loaded at once, then whenever the pair changes.
    let loaded = read().and_then(|(c, k)| cert.set(&c, &k).map(|_| (c, k)));
    match &loaded {
        Ok(_) => tracing::info!(cert = %cert_path.display(), "webhook certificate loaded"),
        Err(e) => {
            tracing::warn!(cert = %cert_path.display(), "cannot load the webhook certificate: {e}")
        }
    }
    aoai_runtime::file_watch::watch("webhook certificate", every, loaded.ok(), read, |(c, k)| {
        cert.set(c, k)?;
        tracing::info!(cert = %cert_path.display(), "webhook certificate loaded");
        Ok(())
    })
    .await
}

fn unix_time(seconds: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn ca_params(not_before: i64) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = unix_time(not_before);
    params.not_after = unix_time(not_before + CA_LIFETIME);
    params
}

/// Not-after of the first certificate in `pem` (Unix seconds), and its DNS names.
fn inspect(pem: &[u8]) -> Option<(i64, Vec<String>)> {
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => Some(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                        16 => <[u8; 16]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some((cert.validity().not_after.timestamp(), names))
}

/// What the Secret should hold at `now` for a webhook reached as `dns_names`: `None` when what it
/// holds is good, else the new data. A new CA is issued when there is none or it nears expiry;
/// the old one stays in the bundle (`ca.crt`) until it expires, so callers never see a gap.
pub fn plan(
    data: Option<&BTreeMap<String, ByteString>>,
    dns_names: &[String],
    now: i64,
) -> Option<BTreeMap<String, ByteString>> {
    let get = |key: &str| data.and_then(|d| d.get(key)).map(|v| v.0.clone());
    let ca_key = get(CA_KEY).and_then(|k| KeyPair::from_pem(&String::from_utf8_lossy(&k)).ok());
    let ca_bundle = get(CA_CERT).unwrap_or_default();
    let ca = match (ca_key, inspect(&ca_bundle)) {
        (Some(key), Some((not_after, _))) if not_after - now > CA_RENEW_BEFORE => {
            Some((key, not_after))
        }
        _ => None,
    };
    let serving_good = ca.is_some()
        && get(TLS_KEY).is_some()
        && get(TLS_CERT)
            .and_then(|c| inspect(&c))
            .is_some_and(|(not_after, names)| {
                not_after - now > SERVING_RENEW_BEFORE
                    && dns_names.iter().all(|n| names.contains(n))
            });
    if serving_good {
        // Drop CAs that have expired from the bundle; otherwise nothing to do.
        let pruned = still_valid(&ca_bundle, now);
        if pruned.as_bytes() == ca_bundle.as_slice() {
            return None;
        }
        let mut data = data.cloned().unwrap_or_default();
        data.insert(CA_CERT.to_string(), ByteString(pruned.into_bytes()));
        return Some(data);
    }
    let (ca_key, bundle) = match ca {
        Some((key, _)) => (key, String::from_utf8_lossy(&ca_bundle).to_string()),
        None => {
            let key = KeyPair::generate().expect("generate a CA key");
            let cert = ca_params(now - 300)
                .self_signed(&key)
                .expect("self-sign the CA");
            // Keep still-valid older CAs: the API server may hold a caBundle with only those.
            (key, cert.pem() + &still_valid(&ca_bundle, now))
        }
    };
    let issuer = Issuer::new(ca_params(now - 300), &ca_key);
    let serving_key = KeyPair::generate().expect("generate a serving key");
    let mut params = CertificateParams::new(dns_names.to_vec()).expect("serving params");
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        dns_names
            .first()
            .map(String::as_str)
            .unwrap_or("aoai-operator"),
    );
    params.distinguished_name = name;
    params.not_before = unix_time(now - 300);
    params.not_after = unix_time(now + SERVING_LIFETIME);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let serving = params
        .signed_by(&serving_key, &issuer)
        .expect("sign the serving certificate");
    let bytes = |s: String| ByteString(s.into_bytes());
    Some(BTreeMap::from([
        (CA_CERT.to_string(), bytes(bundle)),
        (CA_KEY.to_string(), bytes(ca_key.serialize_pem())),
        (TLS_CERT.to_string(), bytes(serving.pem())),
        (TLS_KEY.to_string(), bytes(serving_key.serialize_pem())),
    ]))
}

/// The certificates of a PEM bundle that have not expired at `now`, as PEM. Returns the bundle
/// as it was when all are valid.
fn still_valid(bundle: &[u8], now: i64) -> String {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(bundle).flatten().collect();
    let valid: Vec<String> = certs
        .iter()
        .map(pem_of)
        .filter(|pem| inspect(pem.as_bytes()).is_some_and(|(not_after, _)| not_after > now))
        .collect();
    if valid.len() == certs.len() {
        return String::from_utf8_lossy(bundle).to_string();
    }
    valid.concat()
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Where the self-managed certificate lives and whom it is for.
#[derive(Clone, Debug)]
pub struct SelfManaged {
    pub namespace: String,
    pub secret_name: String,
    /// The webhook Service: the certificate is valid for its DNS names.
    pub service_name: String,
    /// The MutatingWebhookConfiguration whose caBundle the leader keeps current.
    pub webhook_configuration: String,
    /// More names (or IP addresses) the certificate is valid for, for a webhook reached by URL
    /// (an operator run outside the cluster, the end-to-end tests).
    pub extra_names: Vec<String>,
}

impl SelfManaged {
    pub fn dns_names(&self) -> Vec<String> {
        let (service, namespace) = (&self.service_name, &self.namespace);
        let mut names = vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
            format!("{service}.{namespace}"),
            service.clone(),
        ];
        names.extend(self.extra_names.iter().cloned());
        names
    }
}

/// Leader: creates or rotates the Secret as [`plan`] says, then makes the webhook
/// configuration's caBundle equal to the Secret's `ca.crt`. Returns the Secret's data.
pub async fn ensure(
    client: &Client,
    config: &SelfManaged,
    now: i64,
) -> Result<BTreeMap<String, ByteString>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let existing = secrets.get_opt(&config.secret_name).await?;
    let data = match (
        plan(
            existing.as_ref().and_then(|s| s.data.as_ref()),
            &config.dns_names(),
            now,
        ),
        existing,
    ) {
        (None, Some(secret)) => secret.data.unwrap_or_default(),
        (Some(data), None) => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(config.secret_name.clone()),
                    namespace: Some(config.namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_string(),
                        "aoai-operator".to_string(),
                    )])),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(data.clone()),
                ..Default::default()
            };
            secrets.create(&PostParams::default(), &secret).await?;
            tracing::info!(secret = %config.secret_name, "created the webhook certificate");
            data
        }
        (Some(data), Some(mut secret)) => {
            secret.data = Some(data.clone());
            // replace carries the resourceVersion: a concurrent writer makes this a conflict.
            secrets
                .replace(&config.secret_name, &PostParams::default(), &secret)
                .await?;
            tracing::info!(secret = %config.secret_name, "rotated the webhook certificate");
            data
        }
        (None, None) => unreachable!("plan always issues when there is no Secret"),
    };
    let bundle = data.get(CA_CERT).map(|b| b.0.clone()).unwrap_or_default();
    ensure_ca_bundle(client, &config.webhook_configuration, &bundle).await?;
    Ok(data)
}

/// Sets `caBundle` of every webhook in the configuration that does not carry `bundle` yet.
pub async fn ensure_ca_bundle(client: &Client, name: &str, bundle: &[u8]) -> Result<(), Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(configuration) = api.get_opt(name).await? else {
        tracing::warn!(
            configuration = name,
            "MutatingWebhookConfiguration not found: caBundle not set"
        );
        return Ok(());
    };
    let ops: Vec<serde_json::Value> = configuration
        .webhooks
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, w)| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(bundle))
        .map(|(i, _)| {
            serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                               "value": base64::engine::general_purpose::STANDARD.encode(bundle)})
        })
        .collect();
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).expect("a JSON Patch");
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await?;
    tracing::info!(configuration = name, "caBundle updated");
    Ok(())
}

/// Every replica: loads the serving certificate from the Secret (and, on the leader, keeps it
/// current with [`ensure`]) every `every`.
pub async fn run_self_managed(
    client: Client,
    config: SelfManaged,
    cert: Arc<ServingCert>,
    is_leader: impl Fn() -> bool,
    every: Duration,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    loop {
        let data = if is_leader() {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            ensure(&client, &config, now).await.map(Some)
        } else {
            secrets
                .get_opt(&config.secret_name)
                .await
                .map(|s| s.and_then(|s| s.data))
        };
        match data {
            Ok(Some(data)) => {
                let text = |key: &str| {
                    data.get(key)
                        .map(|v| String::from_utf8_lossy(&v.0).to_string())
                        .unwrap_or_default()
                };
                match cert.set(&text(TLS_CERT), &text(TLS_KEY)) {
                    Ok(true) => {
                        tracing::info!(secret = %config.secret_name, "webhook certificate loaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(secret = %config.secret_name, "cannot load the webhook certificate: {e}")
                    }
                }
            }
            Ok(None) => {
                tracing::info!(secret = %config.secret_name, "waiting for the leader to create the webhook certificate")
            }
            Err(e) => {
                tracing::warn!(secret = %config.secret_name, "cannot read or write the webhook certificate: {e}")
            }
        }
        let delay = if cert.is_loaded() {
            every
        } else {
            Duration::from_secs(2)
        };
        tokio::time::sleep(delay).await;
    }
}
