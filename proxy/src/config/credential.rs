//! Which credential the proxy uses, from the variables: explicit (`AOAI_PROXY_CREDENTIAL`) or
//! inferred from the one kind whose variables are present.

use std::path::PathBuf;

use super::vars::names;
use super::{ConfigError, Env, Secret, error, parse_http_url};

/// A user-assigned managed identity, by one of its three ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserAssignedId {
    ClientId(String),
    ObjectId(String),
    ResourceId(String),
}

/// Where managed-identity tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagedIdentityEndpoint {
    /// The Instance Metadata Service (VMs, AKS nodes); base URL such as http://169.254.169.254.
    Imds { base: String },
    /// App Service / Functions / Container Apps: `IDENTITY_ENDPOINT` with `IDENTITY_HEADER`.
    AppService { endpoint: String, header: Secret },
}

/// The Entra ID application the certificate, secret and workload-identity credentials
/// authenticate as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraApp {
    pub tenant_id: String,
    pub client_id: String,
}

/// The credential the proxy uses to obtain its Entra ID token: each kind with what it needs, and
/// nothing it does not (a managed identity has no application).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Certificate {
        app: EntraApp,
        /// Which variable named the file, for messages.
        path_variable: &'static str,
        path: PathBuf,
        /// The private key's own PEM file, when `path` holds only the certificate.
        key_path: Option<PathBuf>,
        password: Option<Secret>,
        send_chain: bool,
    },
    Secret {
        app: EntraApp,
        secret: SecretSource,
    },
    WorkloadIdentity {
        app: EntraApp,
        token_file: PathBuf,
    },
    ManagedIdentity {
        endpoint: ManagedIdentityEndpoint,
        id: Option<UserAssignedId>,
    },
}

/// A client secret given inline or as a file re-read at each refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline(Secret),
    File(PathBuf),
}

/// The credential kinds, as `AOAI_PROXY_CREDENTIAL` names them (the operator writes these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    Certificate,
    Secret,
    WorkloadIdentity,
    ManagedIdentity,
}

impl CredentialKind {
    pub const ALL: [Self; 4] = [
        Self::Certificate,
        Self::Secret,
        Self::WorkloadIdentity,
        Self::ManagedIdentity,
    ];

    /// The value of `AOAI_PROXY_CREDENTIAL`; also the label in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Secret => "secret",
            Self::WorkloadIdentity => "workload-identity",
            Self::ManagedIdentity => "managed-identity",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl Credential {
    pub fn credential_kind(&self) -> CredentialKind {
        match self {
            Credential::Certificate { .. } => CredentialKind::Certificate,
            Credential::Secret { .. } => CredentialKind::Secret,
            Credential::WorkloadIdentity { .. } => CredentialKind::WorkloadIdentity,
            Credential::ManagedIdentity { .. } => CredentialKind::ManagedIdentity,
        }
    }

    /// Short name used in logs and metric labels.
    pub fn kind(&self) -> &'static str {
        self.credential_kind().as_str()
    }
}

/// A GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47.
pub fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_tenant(text: &str) -> Result<String, String> {
    let domain = text.contains('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if is_guid(text) || domain {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a tenant id (a GUID or a domain such as contoso.onmicrosoft.com)"
        ))
    }
}

fn check_client_id(text: &str) -> Result<String, String> {
    if is_guid(text) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a client id (a GUID such as 00000000-0000-0000-0000-000000000000)"
        ))
    }
}

const CREDENTIAL_KINDS: &str = "certificate, secret, workload-identity or managed-identity";

/// Chooses the credential: `AOAI_PROXY_CREDENTIAL` when set, otherwise the one kind whose variables
/// are present; managed identity when none is (as the Go managed-identity proxy did).
pub(super) fn credential_from<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<Credential, ConfigError> {
    let certificate = env.get_aliased(
        names::AZURE_CERTIFICATE_PATH,
        names::AZURE_CLIENT_CERTIFICATE_PATH,
    )?;
    let secret_inline = env.get(names::AZURE_CLIENT_SECRET);
    let secret_file = env.get(names::AOAI_PROXY_CLIENT_SECRET_FILE);
    let federated = env.get(names::AZURE_FEDERATED_TOKEN_FILE);
    let identity_endpoint = env.get(names::IDENTITY_ENDPOINT);

    let kind = match env.get(names::AOAI_PROXY_CREDENTIAL) {
        Some(text) => CredentialKind::parse(&text).ok_or_else(|| {
            error(
                names::AOAI_PROXY_CREDENTIAL,
                format!("{text:?} is not a credential kind (use {CREDENTIAL_KINDS})"),
            )
        })?,
        None => {
            let mut present: Vec<(CredentialKind, &str)> = Vec::new();
            if let Some((name, _)) = &certificate {
                present.push((CredentialKind::Certificate, name));
            }
            if secret_inline.is_some() {
                present.push((CredentialKind::Secret, names::AZURE_CLIENT_SECRET));
            }
            if secret_file.is_some() {
                present.push((CredentialKind::Secret, names::AOAI_PROXY_CLIENT_SECRET_FILE));
            }
            if federated.is_some() {
                present.push((
                    CredentialKind::WorkloadIdentity,
                    names::AZURE_FEDERATED_TOKEN_FILE,
                ));
            }
            if identity_endpoint.is_some() {
                present.push((CredentialKind::ManagedIdentity, names::IDENTITY_ENDPOINT));
            }
            let mut kinds: Vec<&str> = present.iter().map(|(k, _)| k.as_str()).collect();
            kinds.dedup();
            match present.as_slice() {
                [(one, _)] => *one,
                [(one, _), rest @ ..] if rest.iter().all(|(k, _)| k == one) => *one,
                [] if env.get(names::AZURE_TENANT_ID).is_some() => {
                    return Err(error(
                        names::AOAI_PROXY_CREDENTIAL,
                        "AZURE_TENANT_ID is set but no credential is: set AZURE_CERTIFICATE_PATH, AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE, or AOAI_PROXY_CREDENTIAL=managed-identity",
                    ));
                }
                [] => CredentialKind::ManagedIdentity,
                _ => {
                    let variables: Vec<&str> = present.iter().map(|(_, n)| *n).collect();
                    return Err(error(
                        names::AOAI_PROXY_CREDENTIAL,
                        format!(
                            "several credentials are configured ({}); set AOAI_PROXY_CREDENTIAL to one of {}",
                            variables.join(", "),
                            kinds.join(", ")
                        ),
                    ));
                }
            }
        }
    };

    let app = |why: &str| -> Result<EntraApp, ConfigError> {
        let tenant = env.required(names::AZURE_TENANT_ID, why)?;
        let tenant_id = check_tenant(&tenant).map_err(|m| error(names::AZURE_TENANT_ID, m))?;
        let client = env.required(names::AZURE_CLIENT_ID, why)?;
        let client_id = check_client_id(&client).map_err(|m| error(names::AZURE_CLIENT_ID, m))?;
        Ok(EntraApp {
            tenant_id,
            client_id,
        })
    };

    match kind {
        CredentialKind::Certificate => {
            let (path_variable, path) = certificate.ok_or_else(|| {
                error(
                    names::AZURE_CERTIFICATE_PATH,
                    "is required for the certificate credential (or AZURE_CLIENT_CERTIFICATE_PATH)",
                )
            })?;
            let app = app("for the certificate credential")?;
            Ok(Credential::Certificate {
                app,
                path_variable,
                path: PathBuf::from(path),
                key_path: env
                    .get(names::AOAI_PROXY_CERTIFICATE_KEY_PATH)
                    .map(PathBuf::from),
                password: env
                    .get(names::AZURE_CLIENT_CERTIFICATE_PASSWORD)
                    .map(Secret::new),
                send_chain: env.bool(names::AZURE_CLIENT_SEND_CERTIFICATE_CHAIN)?,
            })
        }
        CredentialKind::Secret => {
            let secret = match (secret_inline, secret_file) {
                (Some(_), Some(_)) => {
                    return Err(error(
                        names::AOAI_PROXY_CLIENT_SECRET_FILE,
                        "contradicts AZURE_CLIENT_SECRET; set only one of them",
                    ));
                }
                (Some(s), None) => SecretSource::Inline(Secret::new(s)),
                (None, Some(f)) => SecretSource::File(PathBuf::from(f)),
                (None, None) => {
                    return Err(error(
                        names::AZURE_CLIENT_SECRET,
                        "is required for the secret credential (or AOAI_PROXY_CLIENT_SECRET_FILE)",
                    ));
                }
            };
            let app = app("for the secret credential")?;
            Ok(Credential::Secret { app, secret })
        }
        CredentialKind::WorkloadIdentity => {
            let token_file = federated.ok_or_else(|| {
                error(
                    names::AZURE_FEDERATED_TOKEN_FILE,
                    "is required for the workload-identity credential",
                )
            })?;
            let app = app("for the workload-identity credential")?;
            Ok(Credential::WorkloadIdentity {
                app,
                token_file: PathBuf::from(token_file),
            })
        }
        CredentialKind::ManagedIdentity => {
            let mut ids = Vec::new();
            if let Some(id) = env.get(names::AZURE_CLIENT_ID) {
                let id = check_client_id(&id).map_err(|m| error(names::AZURE_CLIENT_ID, m))?;
                ids.push((names::AZURE_CLIENT_ID, UserAssignedId::ClientId(id)));
            }
            if let Some(id) = env.get(names::AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID) {
                if !is_guid(&id) {
                    return Err(error(
                        names::AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID,
                        format!("{id:?} is not an object id (a GUID)"),
                    ));
                }
                ids.push((
                    names::AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID,
                    UserAssignedId::ObjectId(id),
                ));
            }
            if let Some(id) = env.get(names::AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID) {
                if !id.starts_with("/subscriptions/") {
                    return Err(error(
                        names::AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID,
                        format!("{id:?} is not an Azure resource id (/subscriptions/...)"),
                    ));
                }
                ids.push((
                    names::AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID,
                    UserAssignedId::ResourceId(id),
                ));
            }
            if ids.len() > 1 {
                let names: Vec<&str> = ids.iter().map(|(n, _)| *n).collect();
                return Err(error(
                    ids[1].0,
                    format!(
                        "a user-assigned identity is chosen by one id only, but {} are set",
                        names.join(" and ")
                    ),
                ));
            }
            let endpoint = match identity_endpoint {
                Some(endpoint) => {
                    let endpoint = parse_http_url(&endpoint)
                        .map_err(|m| error(names::IDENTITY_ENDPOINT, m))?;
                    let header = env.required(names::IDENTITY_HEADER, "with IDENTITY_ENDPOINT")?;
                    ManagedIdentityEndpoint::AppService {
                        endpoint,
                        header: Secret::new(header),
                    }
                }
                None => ManagedIdentityEndpoint::Imds {
                    base: env.parsed(names::AZURE_POD_IDENTITY_AUTHORITY_HOST, parse_http_url)?,
                },
            };
            Ok(Credential::ManagedIdentity {
                endpoint,
                id: ids.pop().map(|(_, id)| id),
            })
        }
    }
}
