//! aoai-operator: the `AzureOpenAIProxy` CRD, its controller, the mutating webhook that injects the
//! aoai-proxy sidecar, and the offline `inject` command.

pub mod admin;
pub mod annotations;
pub mod certs;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod inject;
pub mod lease;
pub mod metrics;
pub mod mutate;
pub mod rbac;
pub mod status;
pub mod webhook;
