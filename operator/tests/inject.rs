//! Golden files for `aoai-operator inject` (the webhook's mutation, offline): each
//! `tests/golden/NAME.in.yaml` must give exactly `NAME.out.yaml` on stdout and `NAME.stderr` on
//! stderr, and injecting the output again must change nothing; and every sidecar in them, started as
//! the kubelet would, must configure the proxy its AzureOpenAIProxy describes (the contract).
//!
//! `UPDATE_GOLDEN=1 cargo test -p aoai-operator --test inject` rewrites the expected files; review
//! the diff before committing it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const IMAGE: &str = "ghcr.io/aoai-proxy/aoai-proxy:golden";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Runs the real binary: `aoai-operator inject FILE --proxy-image IMAGE`.
fn run_inject(input: &Path, extra: &[&str]) -> (String, String, Option<i32>) {
    let output = Command::new(env!("CARGO_BIN_EXE_aoai-operator"))
        .arg("inject")
        .arg(input)
        .args(["--proxy-image", IMAGE])
        .args(extra)
        .env_remove("AOAI_OPERATOR_PROXY_IMAGE")
        // No cluster: every AzureOpenAIProxy comes from the input.
        .env("KUBECONFIG", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("run aoai-operator inject");
    (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
        output.status.code(),
    )
}

fn cases() -> Vec<PathBuf> {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 6, "golden inputs are missing");
    inputs
}

#[test]
fn golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for input in cases() {
        let stem = input
            .to_string_lossy()
            .trim_end_matches(".in.yaml")
            .to_string();
        let (stdout, stderr, _) = run_inject(&input, &[]);
        for (path, actual) in [
            (format!("{stem}.out.yaml"), &stdout),
            (format!("{stem}.stderr"), &stderr),
        ] {
            if update {
                std::fs::write(&path, actual).unwrap();
            } else if std::fs::read_to_string(&path).unwrap_or_default() != *actual {
                stale.push(format!("{path}:\n{actual}"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "golden files differ (UPDATE_GOLDEN=1 to accept):\n{}",
        stale.join("\n")
    );
}

#[test]
fn injecting_an_injected_manifest_changes_nothing() {
    for input in cases() {
        let (once, _, _) = run_inject(&input, &[]);
        let dir = tempfile::tempdir().unwrap();
        let injected = dir.path().join("again.yaml");
        std::fs::write(&injected, &once).unwrap();
        let (twice, stderr, _) = run_inject(&injected, &[]);
        assert_eq!(
            once,
            twice,
            "{}: second injection changed the output",
            input.display()
        );
        assert!(!stderr.contains("injected, with"), "{stderr}");
    }
}

#[test]
fn denials_exit_non_zero_and_say_why() {
    let (_, stderr, code) = run_inject(&golden_dir().join("list-skips-and-denials.in.yaml"), &[]);
    assert_eq!(code, Some(1));
    assert!(
        !stderr.contains("service/web"),
        "objects without pods pass silently: {stderr}"
    );
    for expected in [
        "pod/plain: skipped: not_annotated",
        "pod/missing: not injected (proxy_not_found): AzureOpenAIProxy \"nope\" does not exist in namespace \"default\"",
        "pod/typo: not injected (invalid_annotation): annotation aoai-proxy.io/prot=\"9000\": is not an aoai-proxy annotation",
        "pod/clash: not injected (port_conflict): container \"app\" declares port 15080",
        "pod/host: not injected (host_network)",
        "pod/done: skipped: already_injected",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    let (_, _, code) = run_inject(&golden_dir().join("deployment-certificate.in.yaml"), &[]);
    assert_eq!(code, Some(0));
}

#[test]
fn the_manifest_can_be_named_as_kubectl_does() {
    let input = golden_dir().join("deployment-certificate.in.yaml");
    let (positional, _, _) = run_inject(&input, &[]);
    let output = Command::new(env!("CARGO_BIN_EXE_aoai-operator"))
        .args(["inject", "-f"])
        .arg(&input)
        .args(["--proxy-image", IMAGE])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8(output.stdout).unwrap(), positional);
    let both = Command::new(env!("CARGO_BIN_EXE_aoai-operator"))
        .args(["inject", "a.yaml", "-f", "b.yaml"])
        .output()
        .unwrap();
    assert_eq!(
        both.status.code(),
        Some(2),
        "a file named twice is a usage error"
    );
}

#[test]
fn without_a_proxy_or_a_cluster_inject_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod.yaml");
    std::fs::write(&pod, "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {aoai-proxy.io/inject: x}}\nspec: {containers: [{name: a, image: a}]}\n").unwrap();
    let (stdout, stderr, code) = run_inject(&pod, &[]);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
    assert!(
        stderr.starts_with("aoai-operator inject: no AzureOpenAIProxy in the input or --proxy"),
        "{stderr}"
    );

    std::fs::write(&pod, "kind: [unclosed").unwrap();
    let (_, stderr, code) = run_inject(&pod, &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("the input is not YAML"), "{stderr}");
}

/// Every object of `value` (a document, a List's items, a template's nesting) that is a pod: its
/// metadata and spec, where the spec holds containers.

#[test]
fn every_injected_sidecar_in_the_golden_files_configures_the_proxy_it_names() {
    use aoai_operator::inject::{parse, proxies_in};
    let mut checked = Vec::new();
    for input in cases() {
        let stem = input
            .to_string_lossy()
            .trim_end_matches(".in.yaml")
            .to_string();
        let proxies = proxies_in(&parse(&std::fs::read_to_string(&input).unwrap()).unwrap());
        let output = parse(&std::fs::read_to_string(format!("{stem}.out.yaml")).unwrap()).unwrap();
        for (meta, spec) in output.iter().flat_map(aoai_e2e::manifests::pods_in) {
            let has_sidecar = spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
                .any(|c| c.name == aoai_operator::mutate::CONTAINER_NAME);
            if !has_sidecar {
                continue;
            }
            let annotations = meta.annotations.clone().unwrap_or_default();
            let name = &annotations[aoai_operator::annotations::INJECT];
            let proxy = proxies
                .iter()
                .find(|p| p.metadata.name.as_ref() == Some(name))
                .unwrap();
            let what = format!(
                "{} {}",
                stem.rsplit('/').next().unwrap(),
                meta.name.clone().unwrap_or_default()
            );
            checked.push(aoai_e2e::contract::assert_sidecar_configures(
                &what, &meta, &spec, proxy,
            ));
        }
    }
    assert!(
        checked.len() >= 6,
        "too few injected sidecars checked: {checked:#?}"
    );
}
