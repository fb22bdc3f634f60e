//! The credential the proxy uses, checked: which kind is chosen, and whether it has its variables,
//! is `sidecar_env`'s; here are the forms of the ids and URLs.

use std::path::PathBuf;

use super::vars::names;
use super::{ConfigError, Secret, bool, error, inline, parse_http_url, parsed};
use crate::sidecar_env::{
    AppEnv, ClientSecretEnv, CredentialEnv, CredentialKind, ManagedIdentityEnv,
};

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

/// Checks the credential's values: the ids' forms and the endpoint's URL.
pub(super) fn credential_from(env: &CredentialEnv) -> Result<Credential, ConfigError> {
    let app = |app: &AppEnv| -> Result<EntraApp, ConfigError> {
        Ok(EntraApp {
            tenant_id: check_tenant(&app.tenant_id)
                .map_err(|m| error(names::AZURE_TENANT_ID, m))?,
            client_id: check_client_id(&app.client_id)
                .map_err(|m| error(names::AZURE_CLIENT_ID, m))?,
        })
    };
    Ok(match env {
        CredentialEnv::Certificate {
            app: entra,
            path,
            key_path,
            password,
            send_chain,
        } => Credential::Certificate {
            app: app(entra)?,
            path_variable: path.variable(
                names::AZURE_CERTIFICATE_PATH,
                names::AZURE_CLIENT_CERTIFICATE_PATH,
            ),
            path: PathBuf::from(&path.value),
            key_path: key_path.as_ref().map(PathBuf::from),
            password: password
                .as_ref()
                .map(|p| inline(names::AZURE_CLIENT_CERTIFICATE_PASSWORD, p))
                .transpose()?,
            send_chain: bool(names::AZURE_CLIENT_SEND_CERTIFICATE_CHAIN, send_chain)?,
        },
        CredentialEnv::Secret { app: entra, secret } => Credential::Secret {
            app: app(entra)?,
            secret: match secret {
                ClientSecretEnv::Inline(value) => {
                    SecretSource::Inline(inline(names::AZURE_CLIENT_SECRET, value)?)
                }
                ClientSecretEnv::File(path) => SecretSource::File(PathBuf::from(path)),
            },
        },
        CredentialEnv::WorkloadIdentity {
            app: entra,
            token_file,
        } => Credential::WorkloadIdentity {
            app: app(entra)?,
            token_file: PathBuf::from(token_file),
        },
        CredentialEnv::ManagedIdentity { endpoint, id } => Credential::ManagedIdentity {
            endpoint: match endpoint {
                ManagedIdentityEnv::AppService { endpoint, header } => {
                    ManagedIdentityEndpoint::AppService {
                        endpoint: parse_http_url(endpoint)
                            .map_err(|m| error(names::IDENTITY_ENDPOINT, m))?,
                        header: inline(names::IDENTITY_HEADER, header)?,
                    }
                }
                ManagedIdentityEnv::Imds { host } => ManagedIdentityEndpoint::Imds {
                    base: parsed(
                        names::AZURE_POD_IDENTITY_AUTHORITY_HOST,
                        host,
                        parse_http_url,
                    )?,
                },
            },
            id: id.as_ref().map(check_user_assigned_id).transpose()?,
        },
    })
}

fn check_user_assigned_id(id: &UserAssignedId) -> Result<UserAssignedId, ConfigError> {
    match id {
        UserAssignedId::ClientId(id) => check_client_id(id)
            .map(UserAssignedId::ClientId)
            .map_err(|m| error(names::AZURE_CLIENT_ID, m)),
        UserAssignedId::ObjectId(id) if is_guid(id) => Ok(UserAssignedId::ObjectId(id.clone())),
        UserAssignedId::ObjectId(id) => Err(error(
            names::AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID,
            format!("{id:?} is not an object id (a GUID)"),
        )),
        UserAssignedId::ResourceId(id) if id.starts_with("/subscriptions/") => {
            Ok(UserAssignedId::ResourceId(id.clone()))
        }
        UserAssignedId::ResourceId(id) => Err(error(
            names::AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID,
            format!("{id:?} is not an Azure resource id (/subscriptions/...)"),
        )),
    }
}
