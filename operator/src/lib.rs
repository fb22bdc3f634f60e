//! aoai-operator: the `AzureOpenAIProxy` CRD, its controller, the mutating webhook that injects the
//! aoai-proxy sidecar, and the offline `inject` command.

pub mod annotations;
pub mod crd;
pub mod status;
