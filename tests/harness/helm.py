#!/usr/bin/env python3
"""Lints and renders the stackplane chart with real Helm (PyPI's helm-python-sdk, Helm 4's Go SDK).

Run with the virtualenv tests/harness/install.sh creates ($STACKPLANE_CACHE/helm-venv):

  helm.py lint   CHART [-f VALUES]... [--set-json KEY=JSON]... [--kube-version v1.20.2]
      `helm lint --strict`; prints every finding; exits 1 on any warning or error.
  helm.py render CHART [-f VALUES]... [--set-json KEY=JSON]... [--name N] [--namespace NS]
                 [--cluster] [--hooks]
      Prints the rendered manifests as one multi-document YAML stream. With --cluster the chart
      is rendered as `helm install --dry-run=server` renders it: against the cluster in
      KUBECONFIG, so .Capabilities are the API versions that cluster serves, and Helm maps
      every object to a served kind. Without it, offline with Helm's default capabilities.
      --hooks adds the hook manifests (the migrations Job).
  helm.py crds   CHART
      Prints the CRD files of the chart's crds/ directory as JSON [{"name", "data"}].

Errors go to stderr with exit status 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

try:
    import helm_python as helm
except ImportError:  # pragma: no cover - the message is the point
    sys.stderr.write(
        "helm.py: helm-python-sdk is not installed in this Python; run tests/harness/install.sh "
        "and use $STACKPLANE_CACHE/helm-venv/bin/python\n"
    )
    sys.exit(1)


def merged_values(files: list[str], sets: list[str]) -> dict:
    values: dict = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            deep_merge(values, helm.values_from_yaml(f.read()) or {})
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"helm.py: --set-json wants KEY=JSON, got {item!r}")
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = json.loads(raw)
    return values


def deep_merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            deep_merge(into[k], v)
        else:
            into[k] = v


def cmd_lint(args: argparse.Namespace) -> int:
    values = merged_values(args.values, args.set_json)
    report = helm.lint(
        args.chart, values or None, strict=True, kube_version=args.kube_version, quiet=False
    )
    names = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    bad = 0
    for m in report.get("messages", []):
        sev = m.get("severity", 0)
        print(f"[{names.get(sev, sev)}] {m.get('path')}: {m.get('error')}")
        if sev >= 2:
            bad += 1
    bad += len(report.get("errors") or []) if not bad else 0
    print(f"linted {report.get('total_charts_linted', 0)} chart(s): {bad} warning(s)/error(s)")
    return 1 if bad else 0


def cmd_render(args: argparse.Namespace) -> int:
    values = merged_values(args.values, args.set_json)
    chart = helm.Chart.load(args.chart)
    docs: list[str] = []
    if args.cluster:
        if not os.environ.get("KUBECONFIG"):
            raise SystemExit("helm.py: --cluster needs KUBECONFIG (the test cluster's)")
        config = helm.Config(namespace=args.namespace)
        release = config.install(
            chart, args.name, values or None, namespace=args.namespace, dry_run="server"
        )
        docs.append(release.get("manifest", ""))
        if args.hooks:
            # The SDK's release carries no hooks: render them offline (they use no capability).
            rendered = chart.render(
                values or None, name=args.name, namespace=args.namespace, is_install=True
            )
            docs.extend(
                f"# Source: {path}\n{text}"
                for path, text in sorted(rendered.items())
                if "helm.sh/hook" in text
            )
    else:
        rendered = chart.render(
            values or None, name=args.name, namespace=args.namespace, is_install=True
        )
        for path in sorted(rendered):
            if path.endswith("NOTES.txt"):
                continue
            is_hook = "helm.sh/hook" in rendered[path]
            if is_hook and not args.hooks:
                continue
            docs.append(f"# Source: {path}\n{rendered[path]}")
    out = "\n---\n".join(d.strip("\n") for d in docs if d.strip())
    sys.stdout.write(out + "\n")
    return 0


def cmd_crds(args: argparse.Namespace) -> int:
    chart = helm.Chart.load(args.chart)
    json.dump([{"name": c["name"], "data": c["data"]} for c in chart.crds], sys.stdout)
    return 0


def main() -> int:
    helm.disable_logging()
    p = argparse.ArgumentParser(prog="helm.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("lint", "render"):
        s = sub.add_parser(name)
        s.add_argument("chart")
        s.add_argument("-f", "--values", action="append", default=[])
        s.add_argument("--set-json", action="append", default=[])
        if name == "lint":
            s.add_argument("--kube-version", default="v1.20.2")
        else:
            s.add_argument("--name", default="stackplane")
            s.add_argument("--namespace", default="stackplane")
            s.add_argument("--cluster", action="store_true")
            s.add_argument("--hooks", action="store_true")
    c = sub.add_parser("crds")
    c.add_argument("chart")
    args = p.parse_args()
    try:
        return {"lint": cmd_lint, "render": cmd_render, "crds": cmd_crds}[args.cmd](args)
    except helm.HelmError as e:
        sys.stderr.write(f"helm.py {args.cmd}: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
