//! Timeouts and limits, with their defaults from [`super::ENV_VARS`].

use std::time::Duration;

use super::vars::names;
use super::{ConfigError, Env};
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
    /// The defaults of [`ENV_VARS`].
    fn default() -> Self {
        Self::from_env(&Env(|_| None)).expect("every default in ENV_VARS parses")
    }
}

impl Limits {
    pub(super) fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            connect_timeout: env.duration(names::AOAI_PROXY_CONNECT_TIMEOUT)?,
            identity_timeout: env.duration(names::AOAI_PROXY_IDENTITY_TIMEOUT)?,
            upstream_timeout: env.duration(names::AOAI_PROXY_UPSTREAM_TIMEOUT)?,
            pool_idle_timeout: env.duration(names::AOAI_PROXY_POOL_IDLE_TIMEOUT)?,
            header_read_timeout: env.duration(names::AOAI_PROXY_HEADER_READ_TIMEOUT)?,
            max_request_body: env.optional(names::AOAI_PROXY_MAX_REQUEST_BODY, parse_bytes)?,
            shutdown_grace: env.duration(names::AOAI_PROXY_SHUTDOWN_GRACE)?,
        })
    }
}
