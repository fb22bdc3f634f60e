//! Loopback stand-ins for Azure, shared by the proxy's tests, the end-to-end tests and the
//! benchmark harness: a mock Azure OpenAI upstream, a mock Entra ID token endpoint, mock
//! managed-identity endpoints, a test CA, and helpers to drive HTTP; and for the end-to-end
//! tests a real Kubernetes control plane, the Helm chart installed into it and the operator as a
//! process. Everything listens on 127.0.0.1; nothing here talks to Azure.

pub mod ca;
pub mod client;
pub mod contract;
pub mod control_plane;
pub mod egress_proxy;
pub mod entra;
pub mod generated;
pub mod image;
pub mod kubelet;
pub mod managed_identity;
pub mod manifests;
pub mod node;
pub mod openai;
pub mod operator;
pub mod otlp;
pub mod process;
pub mod realtime;
pub mod server;
pub mod sidecar;
pub mod tokens;
pub mod wait;
