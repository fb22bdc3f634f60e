//! The Helm chart agrees with the code: its CRD is `crds/`, its RBAC rules are exactly
//! `rbac::PERMISSIONS` (and so is the README's table), and every value in values.yaml is
//! documented. `UPDATE_CHART=1 cargo test -p aoai-operator --test chart` rewrites the generated
//! parts. (`helm lint` and the values schema are checked by tests/python.)

use std::path::PathBuf;

use aoai_operator::rbac::{self, Scope};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    root().join("charts/aoai-proxy-operator")
}

fn update() -> bool {
    std::env::var_os("UPDATE_CHART").is_some()
}

fn generated_block(path: PathBuf, begin: &str, end: &str, body: &str) {
    aoai_e2e::generated::check_block(&path, begin, end, body, "UPDATE_CHART");
}

#[test]
fn the_chart_installs_the_crd_from_crds() {
    let name = "aoai-proxy.io_azureopenaiproxies.yaml";
    let source = std::fs::read_to_string(root().join("crds").join(name)).unwrap();
    let copy = chart().join("crds").join(name);
    if update() {
        std::fs::write(&copy, &source).unwrap();
    }
    assert!(
        std::fs::read_to_string(copy).unwrap() == source,
        "the chart's CRD differs from crds/"
    );
}

#[test]
fn the_chart_installs_the_admission_policies_the_operator_generates() {
    use aoai_operator::policy;
    for (file, generated) in [
        (
            "mutating-admission-policy.json",
            policy::mutating_policy(policy::IMAGE_PLACEHOLDER),
        ),
        ("refusal-policy.json", policy::refusal_policy()),
        ("warning-policy.json", policy::warning_policy()),
    ] {
        let generated = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        let copy = chart().join("files").join(file);
        if update() {
            std::fs::write(&copy, &generated).unwrap();
        }
        assert!(
            std::fs::read_to_string(copy).unwrap_or_default() == generated,
            "the chart's {file} differs from what policy generates (UPDATE_CHART=1 to accept)"
        );
    }
}

#[test]
fn the_chart_grants_exactly_the_operator_permissions() {
    let own = "{{ include \"aoai.fullname\" . | quote }}";
    let rbac_file = chart().join("templates/rbac.yaml");
    generated_block(
        rbac_file.clone(),
        "# BEGIN generated cluster rules",
        "# END generated cluster rules",
        &rbac::chart_rules(Scope::Cluster, own),
    );
    generated_block(
        rbac_file.clone(),
        "# BEGIN generated namespace rules",
        "# END generated namespace rules",
        &rbac::chart_rules(Scope::OperatorNamespace, own),
    );
    generated_block(
        rbac_file,
        "# BEGIN generated secret rules",
        "# END generated secret rules",
        &rbac::chart_rules(Scope::SecretNamespaces, own),
    );
    generated_block(
        root().join("README.md"),
        "<!-- rbac-table:",
        "<!-- /rbac-table -->",
        &rbac::markdown_table(),
    );
}

#[test]
fn every_value_is_documented() {
    let values = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let lines: Vec<&str> = values.lines().collect();
    let mut undocumented = Vec::new();
    // (indentation, documented) of the enclosing keys: a "# --" comment documents a key and
    // everything nested under it.
    let mut parents: Vec<(usize, bool)> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || trimmed.is_empty() || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        parents.retain(|(i, _)| *i < indent);
        let commented = lines[..index]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with('#'))
            .any(|l| l.trim_start().starts_with("# --"));
        let documented = commented || parents.iter().any(|(_, d)| *d);
        if !value.trim().is_empty() && !documented {
            undocumented.push(key.to_string());
        }
        parents.push((indent, documented));
    }
    assert!(
        undocumented.is_empty(),
        "values.yaml: undocumented values: {undocumented:?}"
    );
}

#[test]
fn the_webhook_is_sent_only_pods_that_carry_the_inject_annotation() {
    let webhook = std::fs::read_to_string(chart().join("templates/webhook.yaml")).unwrap();
    let condition = format!(
        "expression: \"has(object.metadata.annotations) && '{}' in object.metadata.annotations\"",
        aoai_operator::annotations::INJECT
    );
    assert!(
        webhook.contains(&condition),
        "the webhook's matchConditions must name {}",
        aoai_operator::annotations::INJECT
    );
    let injected = format!(
        "object.metadata.annotations['{}'] != '{}'",
        aoai_operator::annotations::STATUS,
        aoai_operator::annotations::STATUS_INJECTED
    );
    assert!(
        webhook.contains(&injected),
        "the webhook's matchConditions must skip pods marked {}: {}",
        aoai_operator::annotations::STATUS,
        aoai_operator::annotations::STATUS_INJECTED
    );
}
