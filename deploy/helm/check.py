#!/usr/bin/env python3
"""Checks the Helm chart with Helm's own library (helm-python-sdk) and the
Kubernetes schemas (kubernetes-validate):

- lints the chart (strict) with the default values and with ci/production-values.yaml;
- renders both and validates every manifest strictly against the Kubernetes
  schemas (kinds from CRDs, such as the ServiceMonitor, are named and skipped);
- checks the pod rules every manifest must keep (non-root, read-only root
  filesystem, every capability dropped, probes on the admin port);
- compares the default rendering with deploy/k8s/pgnm.yaml (the plain manifests
  for users without Helm); with --bless, writes it instead.

Run by the test suite (tests/tests/deploy.rs); `make manifests` re-renders.
"""

import argparse
import pathlib
import sys

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "pgnm"
RENDERED = ROOT / "deploy" / "k8s" / "pgnm.yaml"
KUBE_VERSION = "1.33.0"
CRD_KINDS = {"ServiceMonitor"}
RELEASE, NAMESPACE = "pgnm", "pgnm"


def lint(values, label):
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
    if problems:
        raise SystemExit(f"helm lint ({label}) failed: {problems}")


def render(values):
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    text = ""
    for path in sorted(manifests):
        if path.endswith("NOTES.txt") or not manifests[path].strip():
            continue
        body = manifests[path].strip()
        if not body.startswith("---"):
            body = "---\n" + body
        text += f"# Source: {path}\n{body}\n"
    return text


def documents(text):
    return [d for d in yaml.safe_load_all(text) if d]


def check_pod_rules(doc):
    kind = doc["kind"]
    if kind == "Deployment":
        pod = doc["spec"]["template"]["spec"]
    elif kind == "Job":
        pod = doc["spec"]["template"]["spec"]
    else:
        return
    name = doc["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True, f"{name}: pods run as non-root"
    assert pod.get("automountServiceAccountToken") is False, f"{name}: no API token mounted"
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, f"{name}: read-only root filesystem"
        assert sc["allowPrivilegeEscalation"] is False, f"{name}: no privilege escalation"
        assert sc["capabilities"]["drop"] == ["ALL"], f"{name}: every capability dropped"
        assert "limits" in c["resources"], f"{name}: resources limited"
        if kind == "Deployment":
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        for env in c.get("env", []):
            if "PASSWORD" in env["name"]:
                assert "valueFrom" in env, f"{name}: {env['name']} comes from a Secret"


def validate(text, label):
    docs = documents(text)
    kinds = {}
    for doc in docs:
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        check_pod_rules(doc)
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise SystemExit(f"{label}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}")
    skipped = sorted(k for k in kinds if k in CRD_KINDS)
    print(f"{label}: {len(docs)} manifests valid {dict(sorted(kinds.items()))}" +
          (f" (CRD kinds not schema-checked: {skipped})" if skipped else ""))
    return kinds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bless", action="store_true", help=f"write {RENDERED.relative_to(ROOT)}")
    args = parser.parse_args()

    production = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())
    lint(None, "default values")
    lint(production, "production values")
    default_text = render(None)
    kinds = validate(default_text, "default values")
    assert kinds.get("Deployment") == 3 and kinds.get("PodDisruptionBudget") == 3, kinds
    kinds = validate(render(production), "production values")
    assert kinds.get("Deployment") == 4 and kinds.get("ServiceMonitor") == 1, kinds

    # The schema refuses what the chart cannot deploy.
    chart = helm.Chart.load(str(CHART))
    for bad in ({"redis": {"url": "redis://user:secret@redis:6379"}}, {"router": {"replicas": -1}}, {"unknownKey": 1}):
        try:
            chart.validate_schema(bad)
        except helm.HelmError:
            continue
        raise SystemExit(f"values.schema.json accepted {bad}")

    header = "# Rendered from deploy/helm/pgnm with the default values (release pgnm, namespace pgnm).\n" \
             "# Regenerate with `make manifests`; a test fails when this file is stale.\n"
    expected = header + default_text
    if args.bless:
        RENDERED.parent.mkdir(parents=True, exist_ok=True)
        RENDERED.write_text(expected)
        print(f"wrote {RENDERED.relative_to(ROOT)}")
    elif not RENDERED.exists() or RENDERED.read_text() != expected:
        raise SystemExit(f"{RENDERED.relative_to(ROOT)} is stale: run `make manifests`")
    print("chart ok")


if __name__ == "__main__":
    sys.exit(main())
