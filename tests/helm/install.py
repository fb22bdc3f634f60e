"""`helm install` of the project's chart into a cluster, through Helm's own library (helm-sdkpy),
for the end-to-end tests: python install.py KUBECONFIG RELEASE NAMESPACE VALUES_JSON.

Prints the release's manifest (the rendered objects, as applied) on stdout."""

import asyncio
import json
import pathlib
import sys

from helm_sdkpy.actions import Configuration, Install

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "aoai-proxy-operator"


def main():
    kubeconfig, release, namespace, values = sys.argv[1:5]
    config = Configuration(namespace=namespace, kubeconfig=kubeconfig)
    # No kubelet runs the operator's pods, so nothing would ever be "ready": do not wait.
    result = asyncio.run(
        Install(config).run(release, str(CHART), values=json.loads(values), create_namespace=True, wait=False)
    )
    print(result.get("manifest", ""))


if __name__ == "__main__":
    main()
