"""PrometheusRule helpers for tools/check-k8s (check 3).

    rules.py extract --out DIR FILE...
        Writes the spec of every PrometheusRule (and every plain rules file,
        top-level `groups:`) found in the YAML FILEs to
        DIR/pr_<namespace>_<name>.rules.yaml (file_<name>.rules.yaml for a
        plain rules file) (a plain Prometheus rules file, what
        `promtool check rules` reads) and DIR/<...>.rules.yaml.source (the
        files it came from). The same rule rendered by several overlays is
        written once; two different specs under one name are an error.

    rules.py tests --rules DIR --out OUT TEST...
        Copies each promtool unit-test file to OUT with its rule_files made
        absolute (relative to the test file, as promtool reads them); an entry
        naming a PrometheusRule manifest (the CRD, not a plain rules file) is
        replaced by that rule's extracted file from DIR.
"""

import argparse
import os
import sys

import yaml


def say(msg):
    print(f"check-k8s: rules: {msg}", file=sys.stderr)


def docs_of(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]


def rule_key(doc):
    meta = doc.get("metadata") or {}
    return f"pr_{meta.get('namespace', 'default')}_{meta.get('name', 'unnamed')}"


def extract(args):
    found = {}
    sources = {}
    bad = 0
    plain = set(args.plain or [])
    for path in list(args.files) + sorted(plain - set(args.files)):
        try:
            docs = docs_of(path)
        except yaml.YAMLError as e:
            say(f"{path}: not valid YAML: {e}")
            bad += 1
            continue
        for doc in docs:
            if path in plain:
                if "groups" in doc and "kind" not in doc:
                    # a plain rules file kept beside the manifests
                    key = "file_" + os.path.basename(path).replace(".rules.yaml", "").replace(".yaml", "")
                    found.setdefault(key, {"groups": doc["groups"]})
                    sources.setdefault(key, []).append(path)
                continue
            if "groups" in doc and "kind" not in doc:
                # a plain rules file kept beside the manifests
                key = "file_" + os.path.basename(path).replace(".rules.yaml", "").replace(".yaml", "")
                found.setdefault(key, {"groups": doc["groups"]})
                sources.setdefault(key, []).append(path)
                continue
            if doc.get("kind") != "PrometheusRule":
                continue
            key = rule_key(doc)
            spec = doc.get("spec")
            if not isinstance(spec, dict) or not spec.get("groups"):
                say(f"{path}: PrometheusRule {key}: no spec.groups")
                bad += 1
                continue
            if key in found and found[key] != spec:
                # overlays may legitimately differ (a namespace, a label);
                # keep each distinct spec
                n = 2
                while f"{key}-{n}" in found and found[f"{key}-{n}"] != spec:
                    n += 1
                key = f"{key}-{n}"
            found.setdefault(key, spec)
            sources.setdefault(key, []).append(path)
    for key, spec in found.items():
        out = os.path.join(args.out, f"{key}.rules.yaml")
        with open(out, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": spec["groups"]}, f, sort_keys=False)
        with open(out + ".source", "w", encoding="utf-8") as f:
            f.write(f"PrometheusRule {key} from {', '.join(sources[key])}\n")
    return 1 if bad else 0


def is_prometheus_rule_manifest(path):
    try:
        return any(d.get("kind") == "PrometheusRule" for d in docs_of(path))
    except (OSError, yaml.YAMLError):
        return False


def extracted_for(manifest, rules_dir):
    """The extracted rules files of the PrometheusRule(s) in a manifest."""
    out = []
    for doc in docs_of(manifest):
        if doc.get("kind") != "PrometheusRule":
            continue
        key = rule_key(doc)
        # the manifest before kustomize may lack the namespace the overlay
        # gives it: match on the name
        name = (doc.get("metadata") or {}).get("name", "unnamed")
        cands = sorted(f for f in os.listdir(rules_dir)
                       if f == f"{key}.rules.yaml"
                       or (f.startswith("pr_") and f.endswith(f"_{name}.rules.yaml")))
        if not cands:
            # not rendered by any kustomization: extract it here
            path = os.path.join(rules_dir, f"{key}.rules.yaml")
            with open(path, "w", encoding="utf-8") as f:
                yaml.safe_dump({"groups": (doc.get("spec") or {}).get("groups", [])}, f, sort_keys=False)
            cands = [os.path.basename(path)]
        out.append(os.path.join(rules_dir, cands[0]))
    return out


def tests(args):
    bad = 0
    for test in args.tests:
        try:
            with open(test, encoding="utf-8") as f:
                doc = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as e:
            say(f"{test}: not valid YAML: {e}")
            bad += 1
            continue
        if not isinstance(doc, dict) or not doc.get("tests"):
            say(f"{test}: not a promtool unit-test file (no tests:)")
            bad += 1
            continue
        base = os.path.dirname(os.path.abspath(test))
        files = []
        for entry in doc.get("rule_files") or []:
            path = os.path.normpath(os.path.join(base, entry))
            if not os.path.exists(path):
                say(f"{test}: rule_files entry {entry!r}: {path} does not exist")
                bad += 1
                continue
            if is_prometheus_rule_manifest(path):
                files.extend(extracted_for(path, args.rules))
            else:
                files.append(path)
        if not files:
            say(f"{test}: rule_files names no rules (name the PrometheusRule manifest, "
                "e.g. ../prometheusrule.yaml, or a plain rules file)")
            bad += 1
            continue
        doc["rule_files"] = files
        with open(os.path.join(args.out, os.path.basename(test)), "w", encoding="utf-8") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--out", required=True)
    e.add_argument("--plain", nargs="*", help="files of the tree: only plain rules files "
                   "(top-level groups:, no kind) are taken from them")
    e.add_argument("files", nargs="*")
    t = sub.add_parser("tests")
    t.add_argument("--rules", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("tests", nargs="+")
    args = p.parse_args()
    sys.exit(extract(args) if args.cmd == "extract" else tests(args))


if __name__ == "__main__":
    main()
