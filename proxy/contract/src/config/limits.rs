//! Timeouts and limits, with their defaults from [`super::ENV_VARS`].

use std::time::Duration;

use super::vars::names;
use super::{ConfigError, duration, optional, positive_duration};
use crate::sidecar_env::LimitsEnv;
use crate::units::parse_bytes;

/// Timeouts and limits of the forwarding path.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub identity_timeout: Duration,
    pub upstream_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_request_body: Option<u64>,
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    /// The defaults of [`ENV_VARS`](super::ENV_VARS).
    fn default() -> Self {
        Self::from_env(&LimitsEnv::default()).expect("every default in ENV_VARS parses")
    }
}

impl Limits {
    pub(super) fn from_env(env: &LimitsEnv) -> Result<Self, ConfigError> {
        Ok(Self {
            connect_timeout: positive_duration(
                names::AOAI_PROXY_CONNECT_TIMEOUT,
                &env.connect_timeout,
            )?,
            identity_timeout: duration(names::AOAI_PROXY_IDENTITY_TIMEOUT, &env.identity_timeout)?,
            upstream_timeout: positive_duration(
                names::AOAI_PROXY_UPSTREAM_TIMEOUT,
                &env.upstream_timeout,
            )?,
            pool_idle_timeout: duration(
                names::AOAI_PROXY_POOL_IDLE_TIMEOUT,
                &env.pool_idle_timeout,
            )?,
            header_read_timeout: positive_duration(
                names::AOAI_PROXY_HEADER_READ_TIMEOUT,
                &env.header_read_timeout,
            )?,
            max_request_body: optional(
                names::AOAI_PROXY_MAX_REQUEST_BODY,
                &env.max_request_body,
                parse_bytes,
            )?,
            shutdown_grace: duration(names::AOAI_PROXY_SHUTDOWN_GRACE, &env.shutdown_grace)?,
        })
    }
}
