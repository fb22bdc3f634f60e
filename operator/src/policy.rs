//! The second admission engine: a MutatingAdmissionPolicy the API server applies itself, so that
//! pods are injected while the operator is down, and a new AzureOpenAIProxy works before the
//! operator has seen it.
//!
//! The policy is generated here from what the webhook uses: the container, volume and mount
//! shapes of `mutate` (filled with CEL expressions instead of values), the variable names and
//! their order from the contract's `SidecarEnv::to_env`, the annotation names, the clouds'
//! defaults. It injects only pods it is sure of: a pod with a doubtful annotation, a port clash,
//! `hostNetwork`, or naming an AzureOpenAIProxy that does not exist, is left to the webhook,
//! which refuses it with its message (or, while the operator is down, fails closed). The
//! binding's params are every AzureOpenAIProxy of the pod's namespace; a match condition keeps
//! the one the pod names. The config hash cannot be computed in CEL: it is copied from the
//! AzureOpenAIProxy's status while that status is current.

use aoai_proxy_contract::config::names;
use serde_json::{Value, json};

use crate::annotations::{self, Format};
use crate::crd::{AzureCloud, OtlpProtocolSpec, SamplerSpec};
use crate::mutate::{
    self, AZURE_TOKEN_DIR, AZURE_TOKEN_FILE, AZURE_TOKEN_VOLUME, CREDENTIAL_DIR, CREDENTIAL_VOLUME,
    INBOUND_KEYS_DIR, INBOUND_KEYS_VOLUME, TRUST_DIR, TRUST_FILE, TRUST_VOLUME,
};

/// The mutating policy's and its binding's name.
pub const NAME: &str = "aoai-proxy-inject";
/// The refusing ValidatingAdmissionPolicy's and its binding's name.
pub const REFUSAL_NAME: &str = "aoai-proxy-refuse";
/// The warning ValidatingAdmissionPolicy's and its binding's name.
pub const WARNING_NAME: &str = "aoai-proxy-warn";

/// Stands for the default sidecar image in the chart's copy of the policy
/// (`files/mutating-admission-policy.json`); the chart puts its `proxyImage` there.
pub const IMAGE_PLACEHOLDER: &str = "__AOAI_PROXY_IMAGE__";

/// Marks a JSON string that stands for a CEL expression in [`cel`].
const RAW: &str = "\u{0}cel:";

/// A CEL expression where a value goes.
fn raw(expression: impl AsRef<str>) -> Value {
    Value::String(format!("{RAW}{}", expression.as_ref()))
}

/// `value` as a CEL literal: maps with `dyn` values (so that one map may mix strings, numbers
/// and maps), lists, strings; [`raw`] strings are written as their expression.
fn cel(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => match s.strip_prefix(RAW) {
            Some(expression) => expression.to_string(),
            None => quote(s),
        },
        Value::Array(items) => {
            format!("[{}]", items.iter().map(cel).collect::<Vec<_>>().join(", "))
        }
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: dyn({})", quote(k), cel(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A CEL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A field of the AzureOpenAIProxy's spec, as CEL.
fn spec(path: &str) -> String {
    format!("params.spec.{path}")
}

/// `params.spec.<path>` as a string, or `default` (a CEL expression) when unset.
fn spec_or(path: &str, default: &str) -> String {
    let mut guard = String::from("has(params.spec");
    let mut checks = Vec::new();
    for part in path.split('.') {
        guard.push('.');
        guard.push_str(part);
        checks.push(format!("{guard})"));
    }
    format!(
        "({} ? string({}) : {default})",
        checks.join(" && "),
        spec(path)
    )
}

/// An annotation of the pod, or `default` (a CEL expression).
fn annotation_or(name: &str, default: &str) -> String {
    format!(
        "({q} in object.metadata.annotations ? object.metadata.annotations[{q}] : {default})",
        q = quote(name)
    )
}

/// One variable of the sidecar: `{name, value}`.
fn var(name: &str, value: impl AsRef<str>) -> String {
    cel(&json!({"name": name, "value": raw(value)}))
}

/// `entries` (CEL list items) when `condition` holds.
fn when(condition: &str, entries: &[String]) -> String {
    format!("({condition} ? [{}] : [])", entries.join(", "))
}

/// The path of a mounted key's file: `dir/<key>`, the key given by a CEL expression.
fn file_in(dir: &str, key: &str) -> String {
    format!("{} + string({key})", quote(&format!("{dir}/")))
}

fn credential(kind: &str) -> String {
    format!("has(params.spec.credential.{kind})")
}

/// The cloud's default for `of` (authority host or scope), as a CEL expression.
fn by_cloud(of: fn(AzureCloud) -> &'static str) -> String {
    let mut expression = quote(of(AzureCloud::default()));
    for cloud in AzureCloud::ALL {
        if cloud != AzureCloud::default() {
            expression = format!(
                "({} == {} ? {} : {expression})",
                spec_or("cloud", &quote(cloud.name())),
                quote(cloud.name()),
                quote(of(cloud))
            );
        }
    }
    expression
}

/// The sidecar's variables, in `SidecarEnv::to_env`'s order (a test holds them to it).
fn sidecar_env() -> String {
    let cert = "params.spec.credential.clientCertificate";
    let app = [
        var(names::AZURE_TENANT_ID, spec_or("tenantId", "''")),
        var(names::AZURE_CLIENT_ID, spec_or("clientId", "''")),
    ];
    let managed = "params.spec.credential.managedIdentity";
    let parts = [
        format!(
            "(has(params.spec.backends) && size(params.spec.backends) > 0 ? [{}] : [{}])",
            var(names::AOAI_PROXY_BACKENDS, "variables.backends"),
            var(names::API_BASE_URL, "string(params.spec.endpoint)")
        ),
        failover(),
        format!(
            "[{}]",
            [
                var(names::HOST, "'127.0.0.1'"),
                var(names::PORT, "string(variables.port)"),
                var(names::AOAI_PROXY_ADMIN_HOST, "'0.0.0.0'"),
                var(names::AOAI_PROXY_ADMIN_PORT, "string(variables.adminPort)"),
                var(names::AOAI_PROXY_CREDENTIAL, "variables.kind"),
            ]
            .join(", ")
        ),
        when(
            &credential("clientCertificate"),
            &[
                app[0].clone(),
                app[1].clone(),
                var(
                    names::AZURE_CERTIFICATE_PATH,
                    file_in(CREDENTIAL_DIR, &format!("{cert}.certificateKey")),
                ),
            ],
        ),
        when(
            &format!(
                "{} && {cert}.privateKeyKey != {cert}.certificateKey",
                credential("clientCertificate")
            ),
            &[var(
                names::AOAI_PROXY_CERTIFICATE_KEY_PATH,
                file_in(CREDENTIAL_DIR, &format!("{cert}.privateKeyKey")),
            )],
        ),
        when(
            &format!(
                "{} && has({cert}.sendCertificateChain) && {cert}.sendCertificateChain",
                credential("clientCertificate")
            ),
            &[var(names::AZURE_CLIENT_SEND_CERTIFICATE_CHAIN, "'true'")],
        ),
        when(
            &credential("clientSecret"),
            &[
                app[0].clone(),
                app[1].clone(),
                var(
                    names::AOAI_PROXY_CLIENT_SECRET_FILE,
                    file_in(CREDENTIAL_DIR, "params.spec.credential.clientSecret.key"),
                ),
            ],
        ),
        when(
            &credential("workloadIdentity"),
            &[
                app[0].clone(),
                app[1].clone(),
                var(
                    names::AZURE_FEDERATED_TOKEN_FILE,
                    quote(&format!("{AZURE_TOKEN_DIR}/{AZURE_TOKEN_FILE}")),
                ),
            ],
        ),
        format!(
            "({m} ? (has({managed}.clientId) ? [{}] : has({managed}.objectId) ? [{}] : has({managed}.resourceId) ? [{}] : []) : [])",
            var(
                names::AZURE_CLIENT_ID,
                format!("string({managed}.clientId)")
            ),
            var(
                names::AOAI_PROXY_MANAGED_IDENTITY_OBJECT_ID,
                format!("string({managed}.objectId)")
            ),
            var(
                names::AOAI_PROXY_MANAGED_IDENTITY_RESOURCE_ID,
                format!("string({managed}.resourceId)")
            ),
            m = credential("managedIdentity"),
        ),
        format!(
            "[{}, {}]",
            var(
                names::AZURE_AUTHORITY_HOST,
                spec_or("authorityHost", &by_cloud(AzureCloud::authority_host))
            ),
            var(
                names::AZURE_SCOPE,
                spec_or("scope", &by_cloud(AzureCloud::scope))
            )
        ),
        when(
            "has(params.spec.trust)",
            &[var(
                names::SSL_CERT_FILE,
                quote(&format!("{TRUST_DIR}/{TRUST_FILE}")),
            )],
        ),
        format!(
            "(has(params.spec.egressProxy) && has(params.spec.egressProxy.httpsProxy) ? [{}] : has(params.spec.egressProxy) && has(params.spec.egressProxy.httpsProxyFrom) ? [{}] : [])",
            var(
                names::HTTPS_PROXY,
                "string(params.spec.egressProxy.httpsProxy)"
            ),
            cel(
                &json!({"name": names::HTTPS_PROXY, "valueFrom": {"secretKeyRef": {
                    "name": raw("string(params.spec.egressProxy.httpsProxyFrom.secretName)"),
                    "key": raw("string(params.spec.egressProxy.httpsProxyFrom.key)"),
                }}})
            ),
        ),
        when(
            "has(params.spec.egressProxy) && has(params.spec.egressProxy.noProxy) && size(params.spec.egressProxy.noProxy) > 0",
            &[var(
                names::NO_PROXY,
                "params.spec.egressProxy.noProxy.join(',')",
            )],
        ),
        when(
            "has(params.spec.inboundKeys)",
            &[var(
                names::AOAI_PROXY_INBOUND_KEYS_FILE,
                file_in(INBOUND_KEYS_DIR, "params.spec.inboundKeys.key"),
            )],
        ),
        format!(
            "[{}]",
            var(names::AOAI_PROXY_LOG_LEVEL, "variables.logLevel")
        ),
        tracing(),
    ];
    parts.join(" + ")
}

/// The trace-export variables that `spec.tracing` sets, as `mutate::traces_env` writes them.
fn tracing() -> String {
    let t = "params.spec.tracing";
    let field = |name: &str, variable: &str| {
        when(
            &format!("has({t}) && has({t}.{name})"),
            &[var(variable, format!("string({t}.{name})"))],
        )
    };
    let with_default = |name: &str, variable: &str, default: &str| {
        when(
            &format!("has({t})"),
            &[var(
                variable,
                format!(
                    "(has({t}.{name}) ? string({t}.{name}) : {})",
                    quote(default)
                ),
            )],
        )
    };
    [
        when(
            &format!("has({t})"),
            &[var(
                names::OTEL_EXPORTER_OTLP_ENDPOINT,
                format!("string({t}.endpoint)"),
            )],
        ),
        with_default(
            "protocol",
            names::OTEL_EXPORTER_OTLP_PROTOCOL,
            OtlpProtocolSpec::default().as_str(),
        ),
        when(
            &format!("has({t}) && has({t}.headersFrom)"),
            &[cel(
                &json!({"name": names::OTEL_EXPORTER_OTLP_HEADERS, "valueFrom": {"secretKeyRef": {
                    "name": raw(format!("string({t}.headersFrom.secretName)")),
                    "key": raw(format!("string({t}.headersFrom.key)")),
                }}}),
            )],
        ),
        with_default(
            "sampler",
            names::OTEL_TRACES_SAMPLER,
            SamplerSpec::default().as_str(),
        ),
        field("samplerRatio", names::OTEL_TRACES_SAMPLER_ARG),
        field("resourceAttributes", names::OTEL_RESOURCE_ATTRIBUTES),
    ]
    .join(" + ")
}

/// The failover variables that `spec.failover` sets.
fn failover() -> String {
    [
        ("retryBodyLimit", names::AOAI_PROXY_RETRY_BODY_LIMIT),
        ("ejectAfter", names::AOAI_PROXY_EJECT_AFTER),
        ("ejectFor", names::AOAI_PROXY_EJECT_FOR),
        ("maxThrottleWait", names::AOAI_PROXY_MAX_THROTTLE_WAIT),
    ]
    .iter()
    .map(|(field, name)| {
        when(
            &format!("has(params.spec.failover) && has(params.spec.failover.{field})"),
            &[var(name, format!("string(params.spec.failover.{field})"))],
        )
    })
    .collect::<Vec<_>>()
    .join(" + ")
}

/// `AOAI_PROXY_BACKENDS`: the JSON list the webhook writes (`BackendEntry`; deployments in name
/// order, which the match condition requires of the AzureOpenAIProxy).
fn backends_json() -> String {
    "'[' + params.spec.backends.map(b, '{\"endpoint\":' + strings.quote(string(b.endpoint)) \
     + ',\"priority\":' + string(has(b.priority) ? b.priority : 0) \
     + ',\"weight\":' + string(has(b.weight) ? b.weight : 1) \
     + (has(b.deployments) && size(b.deployments) > 0 ? ',\"deployments\":{' + b.deployments.map(d, strings.quote(string(d.name)) + ':' + strings.quote(string(d.backendName))).join(',') + '}' : '') \
     + '}').join(',') + ']'"
        .to_string()
}

/// The sidecar's volumes and their mounts, in the webhook's order.
fn volumes_and_mounts() -> (String, String) {
    let cert = "params.spec.credential.clientCertificate";
    let secret = "params.spec.credential.clientSecret";
    let keys = "params.spec.inboundKeys";
    let items = |key: &str| json!([mutate::item(raw(format!("string({key})")))]);
    let cert_items = raw(format!(
        "({cert}.certificateKey == {cert}.privateKeyKey ? {} : {})",
        cel(&items(&format!("{cert}.certificateKey"))),
        cel(&json!([
            mutate::item(raw(format!("string({cert}.certificateKey)"))),
            mutate::item(raw(format!("string({cert}.privateKeyKey)"))),
        ]))
    ));
    let volumes = [
        when(
            &credential("clientCertificate"),
            &[cel(&mutate::secret_volume(
                CREDENTIAL_VOLUME,
                raw(format!("string({cert}.secretName)")),
                cert_items,
            ))],
        ),
        when(
            &credential("clientSecret"),
            &[cel(&mutate::secret_volume(
                CREDENTIAL_VOLUME,
                raw(format!("string({secret}.secretName)")),
                items(&format!("{secret}.key")),
            ))],
        ),
        when(
            &credential("workloadIdentity"),
            &[cel(&mutate::token_volume(
                raw("string(params.spec.credential.workloadIdentity.audience)"),
                raw("int(params.spec.credential.workloadIdentity.expirationSeconds)"),
            ))],
        ),
        when(
            "has(params.spec.inboundKeys)",
            &[cel(&mutate::secret_volume(
                INBOUND_KEYS_VOLUME,
                raw(format!("string({keys}.secretName)")),
                items(&format!("{keys}.key")),
            ))],
        ),
        when(
            "has(params.spec.trust) && has(params.spec.trust.configMap)",
            &[cel(&mutate::trust_volume(
                false,
                raw("string(params.spec.trust.configMap.name)"),
                raw("string(params.spec.trust.configMap.key)"),
            ))],
        ),
        when(
            "has(params.spec.trust) && !has(params.spec.trust.configMap) && has(params.spec.trust.secret)",
            &[cel(&mutate::trust_volume(
                true,
                raw("string(params.spec.trust.secret.name)"),
                raw("string(params.spec.trust.secret.key)"),
            ))],
        ),
    ];
    let mounts = [
        when(
            &format!(
                "{} || {}",
                credential("clientCertificate"),
                credential("clientSecret")
            ),
            &[cel(&mutate::mount(CREDENTIAL_VOLUME, CREDENTIAL_DIR))],
        ),
        when(
            &credential("workloadIdentity"),
            &[cel(&mutate::mount(AZURE_TOKEN_VOLUME, AZURE_TOKEN_DIR))],
        ),
        when(
            "has(params.spec.inboundKeys)",
            &[cel(&mutate::mount(INBOUND_KEYS_VOLUME, INBOUND_KEYS_DIR))],
        ),
        when(
            "has(params.spec.trust)",
            &[cel(&mutate::mount(TRUST_VOLUME, TRUST_DIR))],
        ),
    ];
    (volumes.join(" + "), mounts.join(" + "))
}

/// The variables the application containers get, as `{name, value, secret, key}` (a `secret`
/// means a secretKeyRef): each name once, the first list naming it winning, as the webhook does.
fn app_env() -> String {
    let lists = "params.spec.appEnv";
    format!(
        "{lists}.endpointVariables.map(n, {{'name': string(n), 'value': variables.base, 'secret': '', 'key': ''}}) \
         + {lists}.openaiBaseUrlVariables.filter(n, !(n in {lists}.endpointVariables)).map(n, {{'name': string(n), 'value': variables.base + '/openai/v1', 'secret': '', 'key': ''}}) \
         + {lists}.apiKeyVariables.filter(n, !(n in {lists}.endpointVariables) && !(n in {lists}.openaiBaseUrlVariables)).map(n, has(params.spec.inboundKeys) \
             ? {{'name': string(n), 'value': '', 'secret': string(params.spec.inboundKeys.secretName), 'key': has(params.spec.inboundKeys.clientKey) ? string(params.spec.inboundKeys.clientKey) : string(params.spec.inboundKeys.key)}} \
             : {{'name': string(n), 'value': string({lists}.apiKeyPlaceholder), 'secret': '', 'key': ''}})"
    )
}

/// The most application containers the policy injects into: CEL has no index over a list, so
/// each container's operations are written out; a pod with more is left to the webhook.
const MAX_CONTAINERS: usize = 10;

/// The JSON Patch operations that append the application variables to each container (the
/// sidecar is inserted after them, so the indexes hold), each only where the container does not
/// set it already.
fn app_env_patch() -> String {
    let value = "(w.secret == '' ? dyn({'name': dyn(w.name), 'value': dyn(w.value)}) : dyn({'name': dyn(w.name), 'valueFrom': dyn({'secretKeyRef': {'name': w.secret, 'key': w.key}})}))";
    (0..MAX_CONTAINERS)
        .map(|i| {
            let c = format!("object.spec.containers[{i}]");
            let append = |wanted: &str| {
                format!("{wanted}.map(w, JSONPatch{{op: 'add', path: '/spec/containers/{i}/env/-', value: {value}}})")
            };
            format!(
                "(size(object.spec.containers) > {i} ? (has({c}.env) ? {} : (size(variables.appEnv) > 0 ? [JSONPatch{{op: 'add', path: '/spec/containers/{i}/env', value: []}}] + {} : [])) : [])",
                append(&format!("variables.appEnv.filter(w, !{c}.env.exists(e, e.name == w.name))")),
                append("variables.appEnv"),
            )
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Marks a CEL expression inside a text of `mutate::text` (see [`text`]).
const HOLE: char = '\u{1}';

/// A CEL expression where a text of `mutate::text` takes a value.
fn hole(expression: impl AsRef<str>) -> String {
    format!("{HOLE}{}{HOLE}", expression.as_ref())
}

/// A text filled with [`hole`]s, as a CEL string expression.
fn text(filled: &str) -> String {
    filled
        .split(HOLE)
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("({part})")
            } else {
                quote(part)
            }
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Whether annotation `k` of `a` has the format of its override; false for an annotation that
/// is not one.
fn override_valid(a: &str, k: &str) -> String {
    let mut expression = "false".to_string();
    for (name, format) in annotations::OVERRIDES.iter().rev() {
        let check = match format {
            Format::Port => format!(
                "{a}[{k}].matches({}) && int({a}[{k}]) >= {} && int({a}[{k}]) <= 65535",
                quote(&format.pattern()),
                annotations::MIN_PORT
            ),
            _ => format!("{a}[{k}].matches({})", quote(&format.pattern())),
        };
        expression = format!("({k} == {} ? {check} : {expression})", quote(name));
    }
    expression
}

/// The `aoai-proxy.io/` annotations of `a` the webhook refuses, as a CEL list of names.
fn bad_annotations(a: &str) -> String {
    let ours = std::iter::once(annotations::INJECT)
        .chain(annotations::WRITTEN_BY_INJECTION.iter().copied())
        .map(quote)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{a}.filter(k, k.startsWith({}) && !(k in [{ours}]) && !{})",
        quote(annotations::PREFIX),
        override_valid(a, "k")
    )
}

/// Whether the opt-in annotation of `a` names an AzureOpenAIProxy as the webhook reads names.
fn names_a_proxy(a: &str) -> String {
    let inject = format!("{a}[{}]", quote(annotations::INJECT));
    format!(
        "(size({inject}) <= 253 && {inject}.matches({}))",
        quote(annotations::DNS_SUBDOMAIN_PATTERN)
    )
}

/// The webhook's refusal of the pod's annotations `a` (`bad`: [`bad_annotations`]), the first in
/// its order: the opt-in, then the others by name; '' when it reads them all.
fn annotation_refusal(a: &str, bad: &str) -> String {
    let inject = format!("{a}[{}]", quote(annotations::INJECT));
    let mut message = quote(&annotations::unknown_message());
    let mut formats: Vec<Format> = annotations::OVERRIDES.iter().map(|(_, f)| *f).collect();
    formats.dedup();
    for format in formats.iter().rev() {
        let names = annotations::OVERRIDES
            .iter()
            .filter(|(_, f)| f == format)
            .map(|(n, _)| quote(n))
            .collect::<Vec<_>>()
            .join(", ");
        message = format!(
            "(first in [{names}] ? {} : {message})",
            quote(&format.message())
        );
    }
    format!(
        "!{} ? {} : size({bad}) > 0 ? {bad}.filter(k, {bad}.all(j, j >= k)).map(first, {})[0] : ''",
        names_a_proxy(a),
        text(&annotations::invalid_text(
            annotations::INJECT,
            &hole(format!("strings.quote({inject})")),
            annotations::INJECT_MESSAGE,
        )),
        text(&annotations::invalid_text(
            &hole("first"),
            &hole(format!("strings.quote({a}[first])")),
            &hole(message),
        )),
    )
}

/// The webhook's checks that need nothing but the pod: its annotations and `hostNetwork`. A pod
/// that fails them is left alone by the mutating policy and refused by the refusing one.
fn pod_alone_passes() -> String {
    let a = "object.metadata.annotations";
    format!(
        "{} && size({}) == 0 && !(has(object.spec.hostNetwork) && object.spec.hostNetwork)",
        names_a_proxy(a),
        bad_annotations(a)
    )
}

/// The webhook's refusals that depend on the AzureOpenAIProxy, in its order, or ''.
fn refusal() -> String {
    let clash = "p.containerPort == variables.port || p.containerPort == variables.adminPort";
    let clashing = format!(
        "(object.spec.containers + (has(object.spec.initContainers) ? object.spec.initContainers : [])).filter(c, has(c.ports) && c.ports.exists(p, {clash}))"
    );
    let credentials = [
        "clientCertificate",
        "clientSecret",
        "workloadIdentity",
        "managedIdentity",
    ]
    .iter()
    .map(|k| credential(k))
    .collect::<Vec<_>>()
    .join(", ");
    format!(
        "variables.port == variables.adminPort ? {} \
         : size({clashing}) > 0 ? {clashing}.map(c, {})[0] \
         : !((has(params.spec.endpoint) || has(params.spec.backends) && size(params.spec.backends) > 0) && [{credentials}].filter(x, x).size() == 1) ? {} \
         : ''",
        text(&mutate::text::same_ports(&hole("string(variables.port)"))),
        text(&mutate::text::port_conflict(
            &hole("strings.quote(c.name)"),
            &hole(format!(
                "string(c.ports.filter(p, {clash})[0].containerPort)"
            )),
            &hole("string(variables.port)"),
            &hole("string(variables.adminPort)"),
        )),
        text(&mutate::text::invalid_proxy(&hole(
            "strings.quote(string(params.metadata.name))"
        ))),
    )
}

/// Why the policy leaves a pod it could inject to the webhook, or '' (it injects).
fn left_to_webhook() -> String {
    format!(
        "size(object.spec.containers) > {MAX_CONTAINERS} ? 'the pod has more than {MAX_CONTAINERS} containers' \
         : !(!has(params.spec.backends) || params.spec.backends.all(b, string(b.endpoint).matches('^[!-~]*$') && (!has(b.deployments) || b.deployments.map(d, string(d.name)).isSorted()))) \
           ? 'spec.backends names deployments out of name order, or an endpoint with other than printable ASCII' \
         : ''"
    )
}

/// The annotations of annotation-based scraping, when `spec.sidecar.scrapeAnnotations` asks for
/// them and the pod sets none of them.
fn scrape_annotations() -> String {
    let names = annotations::PROMETHEUS_ANNOTATIONS.map(quote).join(", ");
    let path = quote(annotations::METRICS_PATH);
    let values = ["'true'", "string(variables.adminPort)", &path];
    let adds = annotations::PROMETHEUS_ANNOTATIONS
        .iter()
        .zip(values)
        .map(|(name, value)| {
            format!(
                "JSONPatch{{op: 'add', path: '/metadata/annotations/{}', value: {value}}}",
                mutate::pointer_key(name)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "(has(params.spec.sidecar.scrapeAnnotations) && params.spec.sidecar.scrapeAnnotations && ![{names}].exists(k, k in object.metadata.annotations) ? [{adds}] : [])"
    )
}

/// The JSON Patch operations that add `value` under `section` (`requests` or `limits`) of the
/// sidecar's resources, for each annotation override set.
fn resource_overrides() -> String {
    let mut parts = Vec::new();
    for (section, overrides) in [
        (
            "requests",
            [
                ("cpu", annotations::CPU_REQUEST),
                ("memory", annotations::MEMORY_REQUEST),
            ],
        ),
        (
            "limits",
            [
                ("cpu", annotations::CPU_LIMIT),
                ("memory", annotations::MEMORY_LIMIT),
            ],
        ),
    ] {
        let any = overrides
            .iter()
            .map(|(_, a)| format!("{} in object.metadata.annotations", quote(a)))
            .collect::<Vec<_>>()
            .join(" || ");
        parts.push(format!(
            "(({any}) && !('{section}' in variables.resources) ? [JSONPatch{{op: 'add', path: variables.at + '/resources/{section}', value: {{}}}}] : [])"
        ));
        for (key, annotation) in overrides {
            parts.push(format!(
                "({q} in object.metadata.annotations ? [JSONPatch{{op: 'add', path: variables.at + '/resources/{section}/{key}', value: object.metadata.annotations[{q}]}}] : [])",
                q = quote(annotation)
            ));
        }
    }
    parts.join(" + ")
}

/// JSON Patch operations that add `fields` to the sidecar.
fn add_fields(fields: Vec<(&str, Value)>) -> String {
    fields
        .into_iter()
        .map(|(field, value)| {
            format!(
                "JSONPatch{{op: 'add', path: variables.at + '/{field}', value: {}}}",
                cel(&value)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The MutatingAdmissionPolicy, injecting with `default_image` where an AzureOpenAIProxy names
/// no image.
pub fn mutating_policy(default_image: &str) -> Value {
    let (volumes, mounts) = volumes_and_mounts();
    let container = mutate::container_base(
        raw("variables.image"),
        raw("variables.env"),
        raw("variables.adminPort"),
        raw("variables.resources"),
    );
    let native = add_fields(mutate::native_fields(raw("variables.adminPort")));
    let regular = add_fields(mutate::regular_fields());
    let hash_current = "has(params.status) && has(params.status.configHash) && has(params.status.observedGeneration) && params.status.observedGeneration == params.metadata.generation";
    let label = mutate::pointer_key(annotations::PROXY_LABEL);
    let patch = [
        format!(
            "(has(object.metadata.labels) ? [JSONPatch{{op: 'add', path: '/metadata/labels/{label}', value: string(params.metadata.name)}}] : [JSONPatch{{op: 'add', path: '/metadata/labels', value: {{{}: string(params.metadata.name)}}}}])",
            quote(annotations::PROXY_LABEL)
        ),
        format!(
            "[JSONPatch{{op: 'add', path: '/metadata/annotations/{}', value: {}}}]",
            mutate::pointer_key(annotations::STATUS),
            quote(annotations::STATUS_INJECTED)
        ),
        format!(
            "({hash_current} ? [JSONPatch{{op: 'add', path: '/metadata/annotations/{}', value: string(params.status.configHash)}}] : [])",
            mutate::pointer_key(annotations::CONFIG_HASH)
        ),
        scrape_annotations(),
        app_env_patch(),
        "(size(variables.volumes) == 0 ? [] : has(object.spec.volumes) ? variables.volumes.map(v, JSONPatch{op: 'add', path: '/spec/volumes/-', value: v}) : [JSONPatch{op: 'add', path: '/spec/volumes', value: []}] + variables.volumes.map(v, JSONPatch{op: 'add', path: '/spec/volumes/-', value: v}))".to_string(),
        "(variables.native && !has(object.spec.initContainers) ? [JSONPatch{op: 'add', path: '/spec/initContainers', value: []}] : [])".to_string(),
        "[JSONPatch{op: 'add', path: variables.at, value: variables.container}]".to_string(),
        "(size(variables.mounts) > 0 ? [JSONPatch{op: 'add', path: variables.at + '/volumeMounts', value: variables.mounts}] : [])".to_string(),
        format!("(variables.native ? [{native}] : [{regular}])"),
        resource_overrides(),
    ]
    .join(" + ");
    let mark = |annotation: &str, variable: &str| {
        format!(
            "[JSONPatch{{op: 'add', path: '/metadata/annotations/{}', value: variables.{variable}}}]",
            mutate::pointer_key(annotation)
        )
    };
    let patch = format!(
        "variables.refusal != '' ? {} : variables.leftToWebhook != '' ? {} : {patch}",
        mark(annotations::POLICY_REFUSAL, "refusal"),
        mark(annotations::LEFT_TO_WEBHOOK, "leftToWebhook"),
    );
    let variables = [
        (
            "port",
            format!(
                "int({})",
                annotation_or(annotations::PORT, "string(params.spec.sidecar.port)")
            ),
        ),
        (
            "adminPort",
            format!(
                "int({})",
                annotation_or(
                    annotations::ADMIN_PORT,
                    "string(params.spec.sidecar.adminPort)"
                )
            ),
        ),
        (
            "native",
            format!(
                "{} != 'Never'",
                annotation_or(
                    annotations::NATIVE_SIDECAR,
                    "string(params.spec.sidecar.nativeSidecar)"
                )
            ),
        ),
        (
            "logLevel",
            annotation_or(
                annotations::LOG_LEVEL,
                "string(params.spec.sidecar.logLevel)",
            ),
        ),
        (
            "base",
            "'http://127.0.0.1:' + string(variables.port)".to_string(),
        ),
        (
            "at",
            "variables.native ? '/spec/initContainers/0' : '/spec/containers/0'".to_string(),
        ),
        (
            "kind",
            format!(
                "{} ? 'certificate' : {} ? 'secret' : {} ? 'workload-identity' : 'managed-identity'",
                credential("clientCertificate"),
                credential("clientSecret"),
                credential("workloadIdentity")
            ),
        ),
        ("image", spec_or("sidecar.image", &quote(default_image))),
        (
            "backends",
            format!(
                "has(params.spec.backends) && size(params.spec.backends) > 0 ? {} : ''",
                backends_json()
            ),
        ),
        ("env", sidecar_env()),
        (
            "resources",
            format!(
                "has(params.spec.sidecar.resources) ? dyn(params.spec.sidecar.resources) : dyn({})",
                cel(&mutate::default_resources())
            ),
        ),
        ("volumes", volumes),
        ("mounts", mounts),
        ("container", cel(&container)),
        ("appEnv", app_env()),
        ("refusal", refusal()),
        ("leftToWebhook", left_to_webhook()),
    ];
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": NAME},
        "spec": {
            "paramKind": proxy_kind(),
            "matchConstraints": pod_creates(),
            "matchConditions": [
                names_this_proxy(),
                {"name": "not-injected-yet", "expression": format!("!({})", injected("object.metadata.annotations"))},
                {"name": "read-as-the-webhook-reads-it", "expression": pod_alone_passes()},
            ],
            // A failed evaluation leaves the pod to the webhook, and to the refusing policy.
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "IfNeeded",
            "variables": variables.iter().map(|(name, expression)| json!({"name": name, "expression": expression})).collect::<Vec<_>>(),
            "mutations": [
                {"patchType": "JSONPatch", "jsonPatch": {"expression": patch}},
            ],
        },
    })
}

/// The match condition that keeps, of the AzureOpenAIProxies of the namespace, the one the pod
/// names.
fn names_this_proxy() -> Value {
    json!({"name": "names-this-proxy", "expression": format!(
        "has(object.metadata.annotations) && {q} in object.metadata.annotations && object.metadata.annotations[{q}] == params.metadata.name",
        q = quote(annotations::INJECT))})
}

/// Whether annotations `a` say the pod is injected.
fn injected(a: &str) -> String {
    format!(
        "({q} in {a} && {a}[{q}] == {v})",
        q = quote(annotations::STATUS),
        v = quote(annotations::STATUS_INJECTED)
    )
}

/// The ValidatingAdmissionPolicy that refuses, once both admission engines have run, every pod
/// that asked for the sidecar and has none, with the webhook's message: it checks what needs
/// only the pod itself, and gives what the mutating policy found (a refusal, or a pod it left to
/// a webhook that did not answer). No mark means no AzureOpenAIProxy of that name was there.
pub fn refusal_policy() -> Value {
    let a = "variables.annotations";
    let refused = quote(annotations::POLICY_REFUSAL);
    let left = quote(annotations::LEFT_TO_WEBHOOK);
    let refusal = format!(
        "variables.byAnnotations != '' ? variables.byAnnotations \
         : has(object.spec.hostNetwork) && object.spec.hostNetwork ? {} \
         : {refused} in {a} ? {a}[{refused}] \
         : {left} in {a} ? {} \
         : {}",
        quote(mutate::text::HOST_NETWORK),
        text(&left_to_a_silent_webhook(&hole(format!("{a}[{left}]")))),
        text(&mutate::text::proxy_not_found(
            &hole(format!(
                "strings.quote({a}[{}])",
                quote(annotations::INJECT)
            )),
            &hole("strings.quote(request.namespace)"),
        )),
    );
    let variables = [
        ("annotations", "object.metadata.annotations".to_string()),
        ("bad", bad_annotations(a)),
        ("byAnnotations", annotation_refusal(a, "variables.bad")),
        ("refusal", refusal),
    ];
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": REFUSAL_NAME},
        "spec": {
            "matchConstraints": pod_creates(),
            "matchConditions": [
                {"name": "asks-for-the-sidecar", "expression": format!(
                    "has(object.metadata.annotations) && {} in object.metadata.annotations",
                    quote(annotations::INJECT))},
                {"name": "has-none", "expression": format!("!{}", injected("object.metadata.annotations"))},
            ],
            // An evaluation that fails refuses the pod too: it asked for a sidecar it lacks.
            "failurePolicy": "Fail",
            "variables": variables.iter().map(|(name, expression)| json!({"name": name, "expression": expression})).collect::<Vec<_>>(),
            "validations": [{
                "expression": "false",
                "messageExpression": format!("{} + variables.refusal", quote(mutate::text::REFUSAL_PREFIX)),
                "reason": "Forbidden",
            }],
        },
    })
}

/// The refusal of a pod the mutating policy left to the webhook, when the webhook did not answer.
fn left_to_a_silent_webhook(why: &str) -> String {
    format!(
        "the admission policy leaves this pod to the operator's webhook ({why}), which did not answer: start the operator, or change the pod"
    )
}

/// The ValidatingAdmissionPolicy that gives the webhook's warning about an AzureOpenAIProxy that
/// is not Ready, for the pods the mutating policy injected (the webhook warns for its own).
pub fn warning_policy() -> Value {
    let ready = "params.status.conditions.filter(c, c.type == 'Ready')";
    let name = hole("strings.quote(string(params.metadata.name))");
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": WARNING_NAME},
        "spec": {
            "paramKind": proxy_kind(),
            "matchConstraints": pod_creates(),
            "matchConditions": [
                names_this_proxy(),
                {"name": "injected", "expression": injected("object.metadata.annotations")},
                {"name": "not-by-the-webhook", "expression": format!(
                    "!({} in object.metadata.annotations)", quote(annotations::LEFT_TO_WEBHOOK))},
            ],
            "failurePolicy": "Ignore",
            "validations": [{
                "expression": format!("has(params.status) && has(params.status.conditions) && {ready}.exists(c, c.status == 'True')"),
                "messageExpression": format!(
                    "has(params.status) && has(params.status.conditions) && size({ready}) > 0 ? {ready}.map(c, {})[0] : {}",
                    text(&mutate::text::not_ready(&name, &hole("string(c.reason)"), &hole("string(c.message)"))),
                    text(&mutate::text::not_checked(&name)),
                ),
            }],
        },
    })
}

fn proxy_kind() -> Value {
    json!({"apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy"})
}

fn pod_creates() -> Value {
    json!({"resourceRules": [{
        "apiGroups": [""], "apiVersions": ["v1"],
        "operations": ["CREATE"], "resources": ["pods"],
    }]})
}

/// The namespaces the policies act in: those the webhook is called for.
fn match_resources() -> Value {
    json!({"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]},
        {"key": "aoai-proxy.io/injection", "operator": "NotIn", "values": ["disabled"]},
    ]}})
}

/// The mutating policy's binding: every AzureOpenAIProxy of the pod's namespace is a param (the
/// match condition keeps the one the pod names).
pub fn binding() -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": NAME},
        "spec": {
            "policyName": NAME,
            "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
            "matchResources": match_resources(),
        },
    })
}

/// The refusing policy's binding.
pub fn refusal_binding() -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": REFUSAL_NAME},
        "spec": {
            "policyName": REFUSAL_NAME,
            "validationActions": ["Deny"],
            "matchResources": match_resources(),
        },
    })
}

/// The warning policy's binding: params as the mutating policy's.
pub fn warning_binding() -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": WARNING_NAME},
        "spec": {
            "policyName": WARNING_NAME,
            "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
            "validationActions": ["Warn"],
            "matchResources": match_resources(),
        },
    })
}
