"""Every example (and every manifest `inject` produces in the golden files) is valid: Kubernetes
objects against the Kubernetes 1.36 schemas (strict: no unknown fields), AzureOpenAIProxy objects
against the generated CRD in crds/."""

import json

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import ROOT

KUBERNETES = "1.36.0"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
GOLDEN = sorted((ROOT / "operator" / "tests" / "golden").glob("*.out.yaml"))


def crd_schema():
    crd = yaml.safe_load((ROOT / "crds" / "aoai-proxy.io_azureopenaiproxies.yaml").read_text())
    return to_json_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def to_json_schema(node):
    """OpenAPI v3 (as Kubernetes uses it) to JSON Schema: `nullable` allows null; the
    x-kubernetes-* extensions (CEL rules, int-or-string) are not JSON Schema."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "x-kubernetes-int-or-string":
            out["type"] = ["integer", "string"]
        elif key.startswith("x-kubernetes-") or key == "nullable":
            continue
        elif key in ("properties",):
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        else:
            out[key] = to_json_schema(value)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else out["type"] + ["null"]
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def documents(path):
    for document in yaml.safe_load_all(path.read_text()):
        if not document:
            continue
        if document.get("kind") == "List":
            yield from document["items"]
        else:
            yield document


def validate(document):
    if document["kind"] == "AzureOpenAIProxy":
        schema = crd_schema()
        # The API server handles apiVersion, kind and metadata; the schema describes the rest.
        body = {k: v for k, v in document.items() if k not in ("apiVersion", "kind", "metadata")}
        jsonschema.validate(body, schema)
    else:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


@pytest.mark.parametrize("path", EXAMPLES + GOLDEN, ids=lambda p: p.name)
def test_manifest_is_valid(path):
    kinds = []
    for document in documents(path):
        validate(document)
        kinds.append(document["kind"])
    assert kinds


def test_the_crd_check_catches_a_bad_object():
    bad = {"apiVersion": "aoai-proxy.io/v1alpha1", "kind": "AzureOpenAIProxy",
           "spec": {"endpoint": "https://r", "credential": {"clientSecret": {}}, "sidecar": {"port": 80}}}
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containerz": []}})


def test_every_credential_kind_has_an_example():
    kinds = set()
    for path in EXAMPLES:
        for document in documents(path):
            if document["kind"] == "AzureOpenAIProxy":
                kinds.update(document["spec"]["credential"])
    assert kinds == {"clientCertificate", "clientSecret", "workloadIdentity", "managedIdentity"}
