"""The Helm chart: `helm lint` (Helm itself, through helm-sdkpy) passes with the default values and
with each certificate mode and optional feature, and the values schema rejects bad values with a
clear message (jsonschema shows the message; helm lint fails on the same values)."""

import asyncio
import json
import shutil

import jsonschema
import pytest
import yaml
from helm_sdkpy.actions import Configuration
from helm_sdkpy.chart import Lint

from conftest import ROOT

CHART = ROOT / "charts" / "aoai-proxy-operator"
ERROR = 3  # helm's support.ErrorSev


def merged(base, override):
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def values(override=None):
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    return merged(base, override or {})


def lint_errors(tmp_path, override=None):
    """Lints a copy of the chart whose values.yaml carries `override`; returns the error paths."""
    chart = tmp_path / "aoai-proxy-operator"
    shutil.copytree(CHART, chart)
    (chart / "values.yaml").write_text(yaml.safe_dump(values(override)))
    result = asyncio.run(Lint(Configuration()).run(str(chart)))
    return [m["Path"] for m in result["Messages"] if m["Severity"] >= ERROR]


def schema_errors(override):
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [e.message for e in validator.iter_errors(values(override))]


GOOD = {
    "defaults": {},
    "cert-manager": {"webhook": {"certificates": {"mode": "cert-manager"}}},
    "cert-manager with an issuer": {
        "webhook": {"certificates": {"mode": "cert-manager", "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}
    },
    "own secret": {"webhook": {"certificates": {"mode": "secret", "secretName": "my-tls", "caBundle": "TFMwdExTMUNSVWQ="}}},
    "admission policy": {"injection": {"engine": "policy"}, "commonAnnotations": {"owner": "platform"}},
    "webhook alone": {"injection": {"engine": "webhook"}},
    "everything optional": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "podMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
            "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
        },
        "networkPolicy": {"enabled": True, "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
        "priorityClassName": "system-cluster-critical",
        "imagePullSecrets": [{"name": "regcred"}],
        "commonLabels": {"team": "platform"},
        "commonAnnotations": {"owner": "platform"},
        "webhook": {
            "failurePolicy": "Ignore",
            "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
            "objectSelector": {"matchLabels": {"ai": "yes"}},
        },
        "podDisruptionBudget": {"enabled": False},
        "replicaCount": 3,
        "rbac": {"secretNamespaces": ["team-a", "team-b"]},
    },
}


@pytest.mark.parametrize("name", GOOD)
def test_helm_lint_passes(tmp_path, name):
    assert schema_errors(GOOD[name]) == []
    assert lint_errors(tmp_path, GOOD[name]) == []


BAD = [
    ({"replicaCount": "two"}, "'two' is not of type 'integer'"),
    ({"replicaCount": 0}, "0 is less than the minimum of 1"),
    ({"webhook": {"failurePolicy": "Sometimes"}}, "'Sometimes' is not one of ['Fail', 'Ignore']"),
    ({"webhook": {"timeoutSeconds": 60}}, "60 is greater than the maximum of 30"),
    ({"webhook": {"port": 443}}, "443 is less than the minimum of 1024"),
    ({"webhook": {"certificates": {"mode": "vault"}}}, "'vault' is not one of ['self-managed', 'cert-manager', 'secret']"),
    ({"webhook": {"certificates": {"mode": "secret"}}}, "should be non-empty"),
    ({"image": {"pullPolicy": "Sometimes"}}, "'Sometimes' is not one of ['Always', 'IfNotPresent', 'Never']"),
    ({"logFormat": "xml"}, "'xml' is not one of ['text', 'json']"),
    ({"injection": {"engine": "both"}}, "'both' is not one of ['auto', 'policy', 'webhook']"),
    ({"metrics": {"podMonitor": {"interval": "often"}}}, "'often' does not match"),
    ({"metrics": {"grafanaDashboard": {"folder": "AI"}}}, "Additional properties are not allowed ('folder' was unexpected)"),
    ({"certificateExpiryWindow": "a month"}, "'a month' does not match"),
    ({"replicas": 2}, "Additional properties are not allowed ('replicas' was unexpected)"),
    ({"rbac": {"secretNamespaces": ["Team A"]}}, "'Team A' does not match"),
]


@pytest.mark.parametrize("override,message", BAD, ids=[str(b[0]) for b in BAD])
def test_schema_rejects_bad_values(tmp_path, override, message):
    errors = schema_errors(override)
    assert any(message in e for e in errors), errors
    assert "values.yaml" in lint_errors(tmp_path, override)


def test_the_webhook_never_sees_its_own_namespace_or_kube_system():
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    scope = helpers[helpers.index('define "aoai.injectionNamespaces"'):]
    assert 'values: ["kube-system", {{ .Release.Namespace | quote }}]' in scope
    assert "aoai-proxy.io/injection" in scope
    template = (CHART / "templates" / "webhook.yaml").read_text()
    policies = (CHART / "templates" / "admission-policy.yaml").read_text()
    assert template.count('include "aoai.injectionNamespaces"') == 1
    assert policies.count('include "aoai.injectionNamespaces"') == 3
    for setting in ("reinvocationPolicy: IfNeeded", "sideEffects: None", "matchPolicy: Equivalent"):
        assert setting in template
