#!/usr/bin/env python3
"""Checks the operations files under deploy/ (run by scripts/deploy_check.sh, in .ci/run).

1. promtool: the alert rules load and their unit tests pass (one firing and one silent test per alert).
2. Every alert has a runbook_url to docs/runbooks/<alert>.md, which exists and has the four sections.
3. deploy/kubernetes/base/prometheusrule.yaml carries exactly the groups of deploy/prometheus/alerts.yml
   (`--write` regenerates it).
4. The Grafana dashboard is JSON whose panels all have PromQL targets (scripts evaluate them against a
   live Prometheus in the `prometheus::` test).
5. The kustomize base and every overlay render (`kubectl kustomize`) and validate against the
   Kubernetes schemas (kubernetes-validate, strict); the Prometheus Operator's kinds are checked
   for their required fields here, as kubernetes-validate has no schema for them.
"""
import json
import pathlib
import re
import shutil
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
RULE = ROOT / "deploy/kubernetes/base/prometheusrule.yaml"
K8S = ROOT / "deploy/kubernetes"
SECTIONS = ["## What it means", "## Confirm", "## Mitigate", "## Escalate"]
OPERATOR_KINDS = {"ServiceMonitor": ["selector", "endpoints"], "PrometheusRule": ["groups"]}


def fail(msg):
    print(f"deploy_check: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        fail(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r.stdout


def prometheus_rule_text():
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "flotilla", "labels": {"app.kubernetes.io/name": "flotilla-coordinator"}},
        "spec": {"groups": groups},
    }
    head = ("# Generated from deploy/prometheus/alerts.yml by `scripts/deploy_check.py --write`;\n"
            "# edit alerts.yml, not this file (scripts/deploy_check.sh fails when they differ).\n")
    return head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def check_promtool():
    promtool = shutil.which("promtool")
    if not promtool:
        fail("promtool is missing: install Debian's `prometheus` package (apt-get install -y prometheus)")
    run([promtool, "check", "rules", str(ALERTS)])
    out = run([promtool, "test", "rules", "alerts_test.yml"], cwd=ALERTS.parent)
    tests = yaml.safe_load((ALERTS.parent / "alerts_test.yml").read_text())["tests"]
    names = [r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]
    for name in names:
        cases = [c for t in tests for c in t.get("alert_rule_test", []) if c["alertname"] == name]
        if not any(c.get("exp_alerts") for c in cases):
            fail(f"alerts_test.yml has no test in which {name} fires")
        if not any(not c.get("exp_alerts") for c in cases):
            fail(f"alerts_test.yml has no test in which {name} stays silent")
    print(f"promtool: {len(names)} alerts, {len(tests)} unit tests: {out.strip().splitlines()[-1].strip()}")
    return names


def check_runbooks(alert_names):
    for g in yaml.safe_load(ALERTS.read_text())["groups"]:
        for r in g["rules"]:
            url = r.get("annotations", {}).get("runbook_url", "")
            want = f"docs/runbooks/{r['alert']}.md"
            if not url.endswith(want):
                fail(f"{r['alert']}: runbook_url {url!r} does not end with {want}")
            page = ROOT / want
            if not page.is_file():
                fail(f"{r['alert']}: {want} is missing")
            text = page.read_text()
            for s in SECTIONS:
                if s not in text:
                    fail(f"{want}: no section {s!r}")
            if "```" not in text.split("## Confirm", 1)[1].split("## Mitigate", 1)[0]:
                fail(f"{want}: the Confirm section has no commands")
    print(f"runbooks: {len(alert_names)} pages with all four sections")


def check_grafana():
    n = 0
    for path in sorted((ROOT / "deploy/grafana").glob("*.json")):
        dash = json.loads(path.read_text())
        for p in dash["panels"]:
            exprs = [t.get("expr", "") for t in p.get("targets", [])]
            if not exprs or not all(exprs):
                fail(f"{path.name}: panel {p.get('title')!r} has no PromQL target")
            n += len(exprs)
    print(f"grafana: {n} PromQL targets")


def check_kubernetes():
    kubectl = shutil.which("kubectl")
    validate = shutil.which("kubernetes-validate")
    if not validate:
        fail("kubernetes-validate is missing (pip install kubernetes-validate; scripts/deploy_check.sh does)")
    trees = [K8S / "base"] + sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    for tree in trees:
        if kubectl:
            rendered = run([kubectl, "kustomize", str(tree)])
        else:
            fail("kubectl is missing: it renders the kustomize trees (kubectl kustomize)")
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        plain, kinds = [], set()
        for d in docs:
            kinds.add(d["kind"])
            if d["kind"] in OPERATOR_KINDS:
                for field in OPERATOR_KINDS[d["kind"]]:
                    if field not in d.get("spec", {}):
                        fail(f"{tree.name}: {d['kind']} {d['metadata']['name']} has no spec.{field}")
            else:
                plain.append(d)
        out_dir = ROOT / "target/deploy-check" / tree.name
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        for i, d in enumerate(plain):
            (out_dir / f"{i:02}-{d['kind']}.yaml").write_text(yaml.safe_dump(d))
        files = sorted(str(p) for p in out_dir.glob("*.yaml"))
        out = run([validate, "--strict", "--no-warn"] + files)
        if "INFO" not in out and "valid" not in out:
            fail(f"kubernetes-validate said nothing useful:\n{out}")
        print(f"kubernetes {tree.relative_to(K8S)}: {len(docs)} objects ({', '.join(sorted(kinds))}) valid")


def main():
    if "--write" in sys.argv:
        RULE.write_text(prometheus_rule_text())
        print(f"wrote {RULE.relative_to(ROOT)}")
        return
    if RULE.read_text() != prometheus_rule_text():
        fail(f"{RULE.relative_to(ROOT)} differs from deploy/prometheus/alerts.yml: run scripts/deploy_check.py --write")
    names = check_promtool()
    check_runbooks(names)
    check_grafana()
    check_kubernetes()
    print("deploy_check: all passed")


if __name__ == "__main__":
    main()
