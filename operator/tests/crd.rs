//! The generated CRD: `crds/` is current, the schema is structural (what a kube-apiserver accepts),
//! and its CEL rules accept good objects and reject bad ones with their messages.
//!
//! `UPDATE_CRDS=1 cargo test -p aoai-operator --test crd` rewrites `crds/` from the Rust types.

use aoai_operator::crd::AzureOpenAIProxy;
use kube::CustomResourceExt;
use serde_json::{Value, json};

const CRD_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crds/aoai-proxy.io_azureopenaiproxies.yaml"
);

fn generated_yaml() -> String {
    serde_saphyr::to_string(&AzureOpenAIProxy::crd()).unwrap()
}

fn schema() -> Value {
    let crd = serde_json::to_value(AzureOpenAIProxy::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn crds_folder_matches_the_rust_types() {
    let generated = generated_yaml();
    if std::env::var_os("UPDATE_CRDS").is_some() {
        std::fs::write(CRD_FILE, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(CRD_FILE).expect("crds/ holds the CRD");
    assert!(
        committed == generated,
        "crds/ is stale: run `cargo run -p aoai-operator -- crdgen > crds/aoai-proxy.io_azureopenaiproxies.yaml`"
    );
}

/// The structural-schema rules of apiextensions.k8s.io/v1, checked node by node: every node has a
/// type (unless it is int-or-string or preserves unknown fields), value-validation branches
/// (anyOf, oneOf, allOf, not) carry no type, default, nullable or description, no `$ref`, and enum
/// values match their type.
fn structural_violations(node: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        out.push(format!("{path}: not an object"));
        return;
    };
    let flag = |name: &str| map.get(name).and_then(Value::as_bool).unwrap_or(false);
    if map.contains_key("$ref") || map.contains_key("definitions") {
        out.push(format!("{path}: $ref/definitions are not allowed"));
    }
    if in_junctor {
        for forbidden in [
            "type",
            "default",
            "nullable",
            "description",
            "additionalProperties",
        ] {
            if map.contains_key(forbidden) {
                out.push(format!(
                    "{path}: `{forbidden}` inside anyOf/oneOf/allOf/not"
                ));
            }
        }
    } else if !map.contains_key("type")
        && !flag("x-kubernetes-int-or-string")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        out.push(format!("{path}: no type"));
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    if let (Some(values), Some(ty)) = (map.get("enum"), map.get("type").and_then(Value::as_str)) {
        for value in values.as_array().into_iter().flatten() {
            let ok = match ty {
                "string" => value.is_string(),
                "integer" => value.is_i64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                _ => true,
            };
            if !ok {
                out.push(format!("{path}: enum value {value} is not a {ty}"));
            }
        }
    }
    for (key, child) in map.iter().filter(|(k, _)| *k == "properties") {
        for (name, schema) in child.as_object().into_iter().flatten() {
            structural_violations(schema, &format!("{path}.{key}.{name}"), in_junctor, out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get(key).filter(|c| c.is_object()) {
            structural_violations(child, &format!("{path}.{key}"), in_junctor, out);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for (i, branch) in map
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            structural_violations(branch, &format!("{path}.{key}[{i}]"), true, out);
        }
    }
    if let Some(not) = map.get("not") {
        structural_violations(not, &format!("{path}.not"), true, out);
    }
}

#[test]
fn schema_is_structural() {
    let mut violations = Vec::new();
    structural_violations(&schema(), "openAPIV3Schema", false, &mut violations);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_structural_check_catches_what_an_apiserver_rejects() {
    let bad = json!({"type": "object", "properties": {
        "a": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        "b": {"description": "untyped"},
        "c": {"type": "string", "enum": [1]}
    }});
    let mut violations = Vec::new();
    structural_violations(&bad, "x", false, &mut violations);
    assert_eq!(violations.len(), 5, "{violations:#?}");
}

#[test]
fn crd_names_status_and_printer_columns() {
    let crd = AzureOpenAIProxy::crd();
    assert_eq!(crd.spec.group, "aoai-proxy.io");
    assert_eq!(crd.spec.names.plural, "azureopenaiproxies");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["aoaip".to_string()][..])
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Ready", "Endpoint", "Credential", "Injected", "Age"]
    );
}

fn object(spec: Value) -> Value {
    json!({
        "apiVersion": "aoai-proxy.io/v1alpha1",
        "kind": "AzureOpenAIProxy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": spec,
    })
}

fn cel_errors(spec: Value) -> Vec<String> {
    match kube_cel::validate(&schema(), &object(spec), None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

#[test]
fn cel_rules_compile() {
    let compiled = kube_cel::compile_schema(&schema());
    assert!(
        !compiled.has_errors(),
        "{:#?}",
        compiled.compilation_errors()
    );
}

#[test]
fn cel_rules_accept_each_credential_kind() {
    for credential in [
        json!({"clientCertificate": {"secretName": "cert"}}),
        json!({"clientSecret": {"secretName": "s"}}),
        json!({"workloadIdentity": {}}),
    ] {
        let errors = cel_errors(json!({
            "endpoint": "https://r.openai.azure.com",
            "tenantId": TENANT, "clientId": CLIENT,
            "credential": credential,
        }));
        assert!(errors.is_empty(), "{credential}: {errors:?}");
    }
    let errors = cel_errors(json!({
        "endpoint": "https://r.openai.azure.com",
        "credential": {"managedIdentity": {"clientId": CLIENT}},
    }));
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn cel_rules_reject_bad_objects_with_their_message() {
    let cases = [
        (
            json!({"endpoint": "https://r", "tenantId": TENANT, "clientId": CLIENT,
                   "credential": {"clientSecret": {"secretName": "s"}, "workloadIdentity": {}}}),
            "set exactly one credential",
        ),
        (
            json!({"endpoint": "https://r", "tenantId": TENANT, "clientId": CLIENT, "credential": {}}),
            "set exactly one credential",
        ),
        (
            json!({"endpoint": "http://r.openai.azure.com", "credential": {"managedIdentity": {}}}),
            "endpoint must be an https:// URL",
        ),
        (
            json!({"endpoint": "https://r", "credential": {"clientSecret": {"secretName": "s"}}}),
            "tenantId and clientId are required",
        ),
        (
            json!({"endpoint": "https://r", "credential": {"managedIdentity": {"clientId": CLIENT, "objectId": CLIENT}}}),
            "choose a user-assigned identity by one of",
        ),
        (
            json!({"endpoint": "https://r", "authorityHost": "http://login", "credential": {"managedIdentity": {}}}),
            "authorityHost must be an https:// URL",
        ),
        (
            json!({"endpoint": "https://r", "credential": {"managedIdentity": {}},
                   "sidecar": {"port": 15080, "adminPort": 15080}}),
            "port and adminPort must differ",
        ),
    ];
    for (spec, message) in cases {
        let errors = cel_errors(spec.clone());
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{spec}: expected {message:?}, got {errors:?}"
        );
    }
}

/// The README's CRD reference: one row per spec field with its type, default and description,
/// generated from the schema. `UPDATE_README=1` rewrites it.
fn field_rows(node: &Value, path: &str, rows: &mut String) {
    let Some(properties) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, schema) in properties {
        let field = format!("{path}.{name}");
        let ty = match (schema["type"].as_str(), schema.get("enum")) {
            (_, Some(values)) => values
                .as_array()
                .unwrap()
                .iter()
                .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" \\| "),
            (Some("array"), _) => {
                format!("[]{}", schema["items"]["type"].as_str().unwrap_or("object"))
            }
            (Some(ty), _) => ty.to_string(),
            (None, _) => "object".to_string(),
        };
        let default = match schema.get("default") {
            Some(Value::Object(_)) | None => "—".to_string(),
            Some(value) => format!("`{}`", value.to_string().trim_matches('"')),
        };
        let description = schema["description"]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|");
        rows.push_str(&format!(
            "| `{field}` | {ty} | {default} | {description} |\n"
        ));
        // Resource requirements are Kubernetes' own type: documented there.
        if name != "resources" {
            field_rows(schema, &field, rows);
        }
    }
}

#[test]
fn readme_documents_every_spec_field() {
    let mut table = String::from("| field | type | default | meaning |\n|---|---|---|---|\n");
    field_rows(&schema()["properties"]["spec"], "spec", &mut table);
    aoai_e2e::generated::check_block(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")),
        "<!-- crd-table:",
        "<!-- /crd-table -->",
        &table,
        "UPDATE_README",
    );
}
