//! Every label and annotation the operator reads or writes on pods, defined once.

/// Opt-in, set by the application team on a pod (template): the name of the `AzureOpenAIProxy` in
/// the pod's namespace whose sidecar to inject. No default: pods without it are left alone.
pub const INJECT: &str = "aoai-proxy.io/inject";

/// Written by the webhook on an injected pod: `injected`. Makes injection idempotent.
pub const STATUS: &str = "aoai-proxy.io/status";
/// The value of [`STATUS`] on an injected pod.
pub const STATUS_INJECTED: &str = "injected";

/// Written by the webhook: the `AzureOpenAIProxy` config hash the sidecar was built from, so the
/// controller can count pods that run an older configuration.
pub const CONFIG_HASH: &str = "aoai-proxy.io/config-hash";

/// Label written by the webhook on an injected pod: the `AzureOpenAIProxy` name, so the controller
/// can watch exactly the pods injected with a configuration.
pub const PROXY_LABEL: &str = "aoai-proxy.io/proxy";

/// What `kubectl rollout restart` sets on a pod template; the controller sets it the same way when
/// `spec.rollout: Restart`.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
