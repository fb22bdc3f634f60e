//! Entra ID credentials: client certificate, client secret, workload identity, managed identity.
//!
//! The token protocols are small (one form POST to the Entra ID token endpoint, or one GET to a
//! managed-identity endpoint), and they are spoken here over our own hyper + rustls transport
//! rather than through `azure_identity`. That crate's credentials keep a private cache refreshed only
//! within five minutes of expiry with no way to force a refresh (needed after an upstream 401), do not
//! expose `refresh_in`, and its managed-identity endpoint is fixed to 169.254.169.254, which tests
//! must never contact. See the README's "Credentials" section.
//!
//! Files (certificate, secret, federated token) are read at every acquisition, so that a rotated
//! Kubernetes Secret or projected token is used by the next refresh without a restart.

pub mod answer;
pub mod assertion;
/// What the sidecar accepts as a client certificate: the contract crate's, which the operator
/// checks Secrets with.
pub use aoai_proxy_contract::certificate;
pub mod refresh;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use ring::digest::{SHA256, digest};

use crate::config::{
    self, Config, CredentialKind, EntraApp, ManagedIdentityEndpoint, SecretSource, UserAssignedId,
    names,
};
use crate::error::error_chain;
use crate::upstream::Connector;
use answer::parse_token_answer;
use certificate::{CertificateError, ClientCertificate, unix_now};

/// The largest identity answer read: a token answer is a few kilobytes.
const MAX_ANSWER: usize = 1024 * 1024;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A token as an identity endpoint returned it.
pub struct Acquired {
    pub access_token: String,
    pub lifetime: Duration,
    /// When the endpoint advises refreshing (`refresh_in`), if it does.
    pub refresh_in: Option<Duration>,
}

/// Why a token could not be obtained. Displays as one line, never with a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// Local material is unusable: retrying cannot fix it.
    #[error("{variable}: {path}: {message}")]
    Local {
        variable: &'static str,
        path: String,
        message: String,
    },
    /// The endpoint could not be reached or did not answer in time.
    #[error("cannot reach {endpoint}: {message}")]
    Transport { endpoint: String, message: String },
    /// The endpoint answered with an error.
    #[error("{endpoint} answered HTTP {status} {error}: {description}")]
    Rejected {
        endpoint: String,
        status: u16,
        error: String,
        description: String,
    },
    /// The endpoint answered 2xx with something that is not a usable token.
    #[error("{endpoint} answered with an unusable token response: {message}")]
    Malformed { endpoint: String, message: String },
}

impl std::fmt::Debug for Acquired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquired")
            .field("lifetime", &self.lifetime)
            .field("refresh_in", &self.refresh_in)
            .finish_non_exhaustive()
    }
}

impl AcquireError {
    /// True for errors that a retry cannot fix (checked at start, where they stop the program).
    pub fn is_local(&self) -> bool {
        matches!(self, AcquireError::Local { .. })
    }

    /// The kind, as a span's `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            AcquireError::Local { .. } => "local",
            AcquireError::Transport { .. } => "transport",
            AcquireError::Rejected { .. } => "rejected",
            AcquireError::Malformed { .. } => "malformed",
        }
    }
}

/// The HTTP client for identity calls (same TLS trust as the upstream).
#[derive(Clone)]
pub struct IdentityHttp {
    client: Client<Connector, Full<Bytes>>,
    /// How long one identity call may take.
    timeout: Duration,
}

impl IdentityHttp {
    pub fn new(connector: Connector, timeout: Duration) -> Self {
        Self {
            client: crate::upstream::client(connector, Duration::from_secs(90)),
            timeout,
        }
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
        endpoint: &str,
    ) -> Result<(StatusCode, Bytes), AcquireError> {
        let transport = |message: String| AcquireError::Transport {
            endpoint: endpoint.to_string(),
            message,
        };
        let answer = tokio::time::timeout(self.timeout, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| transport(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        AcquireError::Malformed {
                            endpoint: endpoint.to_string(),
                            message: format!("the answer is larger than {MAX_ANSWER} bytes"),
                        }
                    } else {
                        transport(error_chain(&*e))
                    }
                })?
                .to_bytes();
            Ok((status, body))
        })
        .await;
        answer.unwrap_or_else(|_| Err(transport(format!("no answer within {:?}", self.timeout))))
    }
}

fn read_file(variable: &'static str, path: &Path) -> Result<Vec<u8>, AcquireError> {
    std::fs::read(path).map_err(|e| AcquireError::Local {
        variable,
        path: path.display().to_string(),
        message: format!("cannot read the file: {e}"),
    })
}

fn read_trimmed(variable: &'static str, path: &Path) -> Result<String, AcquireError> {
    let content = read_file(variable, path)?;
    let text = String::from_utf8(content)
        .map_err(|_| AcquireError::Local {
            variable,
            path: path.display().to_string(),
            message: "the file is not UTF-8 text".into(),
        })?
        .trim()
        .to_string();
    if text.is_empty() {
        return Err(AcquireError::Local {
            variable,
            path: path.display().to_string(),
            message: "the file is empty".into(),
        });
    }
    Ok(text)
}

/// The certificate file's content, followed by the key file's when the key has its own file.
fn read_material(
    variable: &'static str,
    path: &Path,
    key_path: Option<&Path>,
) -> Result<Vec<u8>, AcquireError> {
    let mut content = read_file(variable, path)?;
    if let Some(key_path) = key_path {
        content.push(b'\n');
        content.extend(read_file(names::AOAI_PROXY_CERTIFICATE_KEY_PATH, key_path)?);
    }
    Ok(content)
}

/// The certificate file, re-read at each acquisition; keeps the last good one if a new one is bad.
struct CertificateFile {
    variable: &'static str,
    path: PathBuf,
    /// The private key's own file, when `path` holds only the certificate.
    key_path: Option<PathBuf>,
    password: Option<config::Secret>,
    loaded: Mutex<(Vec<u8>, Arc<ClientCertificate>)>,
}

impl CertificateFile {
    /// Loads and fully checks the certificate (parse, key match, validity period).
    fn load(
        variable: &'static str,
        path: &Path,
        key_path: Option<&Path>,
        password: Option<&config::Secret>,
    ) -> Result<(Vec<u8>, ClientCertificate), AcquireError> {
        let content = read_material(variable, path, key_path)?;
        let local = |e: CertificateError| AcquireError::Local {
            variable,
            path: path.display().to_string(),
            message: format!("the certificate file {e}"),
        };
        let certificate =
            ClientCertificate::parse(&content, password.map(|p| p.expose())).map_err(local)?;
        certificate.check_validity(unix_now()).map_err(local)?;
        Ok((digest(&SHA256, &content).as_ref().to_vec(), certificate))
    }

    fn current(&self) -> Arc<ClientCertificate> {
        let content_hash = read_material(self.variable, &self.path, self.key_path.as_deref())
            .ok()
            .map(|c| digest(&SHA256, &c).as_ref().to_vec());
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if content_hash.as_ref() != Some(&loaded.0) {
            match Self::load(
                self.variable,
                &self.path,
                self.key_path.as_deref(),
                self.password.as_ref(),
            ) {
                Ok((hash, certificate)) => {
                    tracing::info!(
                        thumbprint = %certificate.thumbprint_sha1_hex(),
                        not_after = %certificate.not_after,
                        "client certificate file changed; using the new certificate"
                    );
                    *loaded = (hash, Arc::new(certificate));
                }
                Err(e) => tracing::warn!("{e}; keeping the certificate loaded before"),
            }
        }
        loaded.1.clone()
    }
}

/// How an Entra ID application proves who it is.
enum Proof {
    Certificate {
        file: CertificateFile,
        send_chain: bool,
    },
    Secret(SecretSource),
    WorkloadIdentity(PathBuf),
}

/// How the token is obtained.
enum Source {
    /// The client-credentials grant at Entra ID's token endpoint, as `app`.
    Entra {
        app: EntraApp,
        token_endpoint: String,
        proof: Proof,
    },
    ManagedIdentity {
        endpoint: ManagedIdentityEndpoint,
        id: Option<UserAssignedId>,
    },
}

/// A configured credential, ready to acquire tokens.
pub struct Credential {
    source: Source,
    scope: String,
    kind: CredentialKind,
}

impl Credential {
    /// Builds the credential and checks its local material: a certificate that is unreadable,
    /// invalid, expired or whose key does not match, or a missing secret or token file, is an
    /// error here, at start, rather than an endless retry.
    pub fn from_config(config: &Config) -> Result<Self, AcquireError> {
        let entra = |app: &EntraApp, proof| Source::Entra {
            token_endpoint: format!(
                "{}/{}/oauth2/v2.0/token",
                config.authority_host, app.tenant_id
            ),
            app: app.clone(),
            proof,
        };
        let source = match &config.credential {
            config::Credential::Certificate {
                app,
                path_variable,
                path,
                key_path,
                password,
                send_chain,
            } => {
                let (hash, certificate) = CertificateFile::load(
                    path_variable,
                    path,
                    key_path.as_deref(),
                    password.as_ref(),
                )?;
                let file = CertificateFile {
                    variable: path_variable,
                    path: path.clone(),
                    key_path: key_path.clone(),
                    password: password.clone(),
                    loaded: Mutex::new((hash, Arc::new(certificate))),
                };
                entra(
                    app,
                    Proof::Certificate {
                        file,
                        send_chain: *send_chain,
                    },
                )
            }
            config::Credential::Secret { app, secret } => {
                if let SecretSource::File(path) = secret {
                    read_trimmed(names::AOAI_PROXY_CLIENT_SECRET_FILE, path)?;
                }
                entra(app, Proof::Secret(secret.clone()))
            }
            config::Credential::WorkloadIdentity { app, token_file } => {
                read_trimmed(names::AZURE_FEDERATED_TOKEN_FILE, token_file)?;
                entra(app, Proof::WorkloadIdentity(token_file.clone()))
            }
            config::Credential::ManagedIdentity { endpoint, id } => Source::ManagedIdentity {
                endpoint: endpoint.clone(),
                id: id.clone(),
            },
        };
        Ok(Self {
            source,
            scope: config.scope.clone(),
            kind: config.credential.credential_kind(),
        })
    }

    /// `certificate`, `secret`, `workload-identity` or `managed-identity`.
    pub fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    /// One line describing the credential for the start-up log, without secrets.
    pub fn describe(&self) -> String {
        let (app, proof) = match &self.source {
            Source::Entra { app, proof, .. } => (app, proof),
            Source::ManagedIdentity { endpoint, id } => {
                let which = match id {
                    None => "system-assigned".to_string(),
                    Some(UserAssignedId::ClientId(v)) => format!("user-assigned, client id {v}"),
                    Some(UserAssignedId::ObjectId(v)) => format!("user-assigned, object id {v}"),
                    Some(UserAssignedId::ResourceId(v)) => {
                        format!("user-assigned, resource id {v}")
                    }
                };
                let from = match endpoint {
                    ManagedIdentityEndpoint::Imds { base } => format!("IMDS at {base}"),
                    ManagedIdentityEndpoint::AppService { endpoint, .. } => {
                        format!("IDENTITY_ENDPOINT {endpoint}")
                    }
                };
                return format!("managed identity ({which}) from {from}");
            }
        };
        let how = match proof {
            Proof::Certificate { file, send_chain } => {
                let certificate = file.current();
                format!(
                    "client certificate {} (thumbprint {}, subject {}, expires {}{})",
                    file.path.display(),
                    certificate.thumbprint_sha1_hex(),
                    certificate.subject,
                    certificate.not_after,
                    if *send_chain { ", sending x5c" } else { "" },
                )
            }
            Proof::Secret(SecretSource::Inline(_)) => {
                "client secret from AZURE_CLIENT_SECRET".into()
            }
            Proof::Secret(SecretSource::File(path)) => {
                format!("client secret from {}", path.display())
            }
            Proof::WorkloadIdentity(path) => {
                format!("workload identity (federated token {})", path.display())
            }
        };
        format!(
            "{how} for client {} in tenant {}",
            app.client_id, app.tenant_id
        )
    }

    /// Expiry of the client certificate (Unix seconds), for certificate credentials.
    pub fn certificate_not_after(&self) -> Option<i64> {
        match &self.source {
            Source::Entra {
                proof: Proof::Certificate { file, .. },
                ..
            } => Some(file.current().not_after_unix),
            _ => None,
        }
    }

    /// Obtains a new token.
    pub async fn acquire(&self, http: &IdentityHttp) -> Result<Acquired, AcquireError> {
        let (app, token_endpoint, proof) = match &self.source {
            Source::Entra {
                app,
                token_endpoint,
                proof,
            } => (app, token_endpoint, proof),
            Source::ManagedIdentity { endpoint, id } => {
                return self.managed_identity(http, endpoint, id.as_ref()).await;
            }
        };
        let exchange = |credential: Vec<(&'static str, String)>| {
            self.exchange(http, app, token_endpoint, credential)
        };
        match proof {
            Proof::Certificate { file, send_chain } => {
                let certificate = file.current();
                let assertion = assertion::client_assertion(
                    &certificate,
                    &app.client_id,
                    token_endpoint,
                    *send_chain,
                    unix_now(),
                )
                .map_err(|_| AcquireError::Local {
                    variable: file.variable,
                    path: file.path.display().to_string(),
                    message: "signing the client assertion failed".into(),
                })?;
                exchange(vec![
                    ("client_assertion_type", JWT_BEARER.to_string()),
                    ("client_assertion", assertion),
                ])
                .await
            }
            Proof::Secret(source) => {
                let secret = match source {
                    SecretSource::Inline(secret) => secret.expose().to_string(),
                    SecretSource::File(path) => {
                        read_trimmed(names::AOAI_PROXY_CLIENT_SECRET_FILE, path)?
                    }
                };
                exchange(vec![("client_secret", secret)]).await
            }
            Proof::WorkloadIdentity(path) => {
                let federated = read_trimmed(names::AZURE_FEDERATED_TOKEN_FILE, path)?;
                exchange(vec![
                    ("client_assertion_type", JWT_BEARER.to_string()),
                    ("client_assertion", federated),
                ])
                .await
            }
        }
    }

    /// The client-credentials grant at the Entra ID token endpoint.
    async fn exchange(
        &self,
        http: &IdentityHttp,
        app: &EntraApp,
        token_endpoint: &str,
        credential: Vec<(&'static str, String)>,
    ) -> Result<Acquired, AcquireError> {
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials")
                .append_pair("client_id", &app.client_id)
                .append_pair("scope", &self.scope);
            for (name, value) in &credential {
                form.append_pair(name, value);
            }
            form.finish()
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(token_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| AcquireError::Transport {
                endpoint: token_endpoint.to_string(),
                message: e.to_string(),
            })?;
        let (status, body) = http.send(request, token_endpoint).await?;
        parse_token_answer(token_endpoint, status, &body)
    }

    async fn managed_identity(
        &self,
        http: &IdentityHttp,
        endpoint: &ManagedIdentityEndpoint,
        id: Option<&UserAssignedId>,
    ) -> Result<Acquired, AcquireError> {
        let resource = self.scope.strip_suffix("/.default").unwrap_or(&self.scope);
        let (base, api_version, resource_id_name) = match endpoint {
            ManagedIdentityEndpoint::Imds { base } => (
                format!("{base}/metadata/identity/oauth2/token"),
                "2018-02-01",
                "msi_res_id",
            ),
            ManagedIdentityEndpoint::AppService { endpoint, .. } => {
                (endpoint.clone(), "2019-08-01", "mi_res_id")
            }
        };
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query
                .append_pair("api-version", api_version)
                .append_pair("resource", resource);
            match id {
                Some(UserAssignedId::ClientId(v)) => query.append_pair("client_id", v),
                Some(UserAssignedId::ObjectId(v)) => query.append_pair("object_id", v),
                Some(UserAssignedId::ResourceId(v)) => query.append_pair(resource_id_name, v),
                None => &mut query,
            };
            query.finish()
        };
        let url = format!("{base}?{query}");
        let mut request = Request::builder().method(Method::GET).uri(&url);
        request = match endpoint {
            ManagedIdentityEndpoint::Imds { .. } => request.header("metadata", "true"),
            ManagedIdentityEndpoint::AppService { header, .. } => {
                request.header("x-identity-header", header.expose())
            }
        };
        let request =
            request
                .body(Full::new(Bytes::new()))
                .map_err(|e| AcquireError::Transport {
                    endpoint: base.clone(),
                    message: e.to_string(),
                })?;
        let (status, body) = http.send(request, &base).await?;
        parse_token_answer(&base, status, &body)
    }
}
