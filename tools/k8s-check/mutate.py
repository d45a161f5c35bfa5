"""Breaks a copy of the real k8s/ tree in one known way (selftest of
tools/check-k8s): proves each check fails on the project's own files, not
only on the small fixtures of tools/k8s-check/broken/.

    mutate.py CASE TREE     # TREE is a copy; prints "FILE<TAB>what was broken"
    mutate.py --list        # the cases, as "CASE CHECK MESSAGE"

Exit status 3 when the tree has nothing the case can break (the selftest
then reports the case as not applicable).
"""

import glob
import json
import os
import sys

import yaml

# case -> (check that must fail, text its message must hold)
CASES = {
    "real-overlay-does-not-build": ("kustomize", "does not build"),
    "real-deployment-bad-field-type": ("schemas", "revisionHistoryLimit: 'ten' is not of type 'integer'"),
    "real-deployment-unknown-field": ("schemas", "selftestUnknownField"),
    "real-scaledobject-unknown-trigger-field": ("schemas", "selftestUnknownField: Object literal may only specify known properties"),
    "real-scaledobject-missing-scaletargetref": ("schemas", "must have required property scaleTargetRef"),
    "real-scaledobject-target-missing": ("refs", "-selftest-typo, which no rendered kustomization ships"),
    "real-rule-promql-syntax-error": ("rules", "promtool check rules failed"),
    "real-rule-unit-test-fails": ("rules", "promtool test rules failed"),
    "real-dashboard-broken-expr": ("dashboard", "PromQL does not parse"),
    "real-dashboard-no-inputs": ("dashboard", "no __inputs"),
}


def yaml_files(tree):
    out = []
    for f in sorted(glob.glob(os.path.join(tree, "**", "*.y*ml"), recursive=True)):
        if "/prometheus/tests/" in f:
            continue
        try:
            with open(f, encoding="utf-8") as fh:
                docs = list(yaml.safe_load_all(fh))
        except yaml.YAMLError:
            continue
        out.append((f, docs))
    return out


def rewrite(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)


def first_kind(tree, kind, under=None):
    for f, docs in yaml_files(tree):
        if under and f"/{under}/" not in f:
            continue
        for d in docs:
            if isinstance(d, dict) and d.get("kind") == kind and isinstance(d.get("spec"), dict):
                return f, docs, d
    return None, None, None


def walk_panels(panels):
    for p in panels or []:
        if isinstance(p, dict):
            yield p
            yield from walk_panels(p.get("panels"))


def mutate(case, tree):
    if case == "real-overlay-does-not-build":
        ks = sorted(glob.glob(os.path.join(tree, "overlays", "*", "kustomization.y*ml")))
        if not ks:
            return None
        with open(ks[0], encoding="utf-8") as f:
            k = yaml.safe_load(f)
        k.setdefault("resources", []).append("selftest-no-such-file.yaml")
        rewrite(ks[0], [k])
        return ks[0], "resources names a file that does not exist"
    if case in ("real-deployment-bad-field-type", "real-deployment-unknown-field"):
        f, docs, d = first_kind(tree, "Deployment", under="base")
        if not f:
            f, docs, d = first_kind(tree, "Deployment")
        if not f:
            return None
        if case == "real-deployment-bad-field-type":
            d["spec"]["revisionHistoryLimit"] = "ten"
            what = "spec.revisionHistoryLimit: \"ten\""
        else:
            d["spec"]["template"]["spec"]["containers"][0]["selftestUnknownField"] = True
            what = "an unknown field in the first container"
        rewrite(f, docs)
        return f, what
    if case in ("real-scaledobject-unknown-trigger-field", "real-scaledobject-missing-scaletargetref",
                "real-scaledobject-target-missing"):
        f, docs, d = first_kind(tree, "ScaledObject")
        if not f:
            return None
        if case == "real-scaledobject-unknown-trigger-field":
            if not d["spec"].get("triggers"):
                return None
            d["spec"]["triggers"][0]["selftestUnknownField"] = "x"
            what = "an unknown field in the first trigger"
        elif case == "real-scaledobject-target-missing":
            if not (d["spec"].get("scaleTargetRef") or {}).get("name"):
                return None
            d["spec"]["scaleTargetRef"]["name"] += "-selftest-typo"
            what = "scaleTargetRef names a Deployment that does not exist"
        else:
            if "scaleTargetRef" not in d["spec"]:
                return None
            del d["spec"]["scaleTargetRef"]
            what = "spec.scaleTargetRef removed"
        rewrite(f, docs)
        return f, what
    if case == "real-rule-promql-syntax-error":
        f, docs, d = first_kind(tree, "PrometheusRule")
        if not f:
            return None
        for g in d["spec"].get("groups") or []:
            for r in g.get("rules") or []:
                r["expr"] = f"({r['expr']}"  # unclosed parenthesis
                rewrite(f, docs)
                return f, f"unclosed parenthesis in {r.get('record') or r.get('alert')}"
        return None
    if case == "real-rule-unit-test-fails":
        tests = sorted(glob.glob(os.path.join(tree, "prometheus", "tests", "*.yaml")))
        for t in tests:
            with open(t, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh)
            if isinstance(doc, dict) and doc.get("tests"):
                doc["tests"][0].setdefault("alert_rule_test", []).append(
                    {"eval_time": "1m", "alertname": "SelftestAlertThatNeverFires",
                     "exp_alerts": [{"exp_labels": {"severity": "page"}}]})
                rewrite(t, [doc])
                return t, "expects an alert that no rule fires"
        return None
    if case in ("real-dashboard-broken-expr", "real-dashboard-no-inputs"):
        path = os.path.join(tree, "grafana", "genfleet.json")
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as fh:
            dash = json.load(fh)
        if case == "real-dashboard-no-inputs":
            if "__inputs" not in dash:
                return None
            del dash["__inputs"]
            what = "__inputs removed"
        else:
            for p in walk_panels(dash.get("panels")):
                ts = [t for t in p.get("targets") or [] if isinstance(t, dict) and t.get("expr")]
                if ts:
                    ts[0]["expr"] = ts[0]["expr"] + " +"  # a binary operator without its right side
                    what = f"panel {p.get('title')!r}: expr ends with a dangling '+'"
                    break
            else:
                return None
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(dash, fh, indent=2)
        return path, what
    raise SystemExit(f"unknown case {case}")


def main():
    if sys.argv[1] == "--list":
        for case, (check, msg) in CASES.items():
            print(f"{case}\t{check}\t{msg}")
        return 0
    case, tree = sys.argv[1], sys.argv[2]
    done = mutate(case, tree)
    if not done:
        return 3
    print(f"{done[0]}\t{done[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
