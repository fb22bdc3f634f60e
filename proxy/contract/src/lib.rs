//! The contract between the aoai-proxy sidecar and whoever configures it (the operator's
//! injection, a manifest, a shell): every environment variable the sidecar reads, its default, and
//! how its value is read and checked, and what it accepts as a client certificate. Both the proxy
//! and the operator use this crate (the operator checks what it injects and the Secrets it names
//! with it), so the two cannot drift apart.

pub mod certificate;
pub mod config;
pub mod egress;
pub mod sidecar_env;
pub mod units;
