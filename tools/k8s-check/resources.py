"""Schema check of rendered Kubernetes manifests (tools/check-k8s, check 2).

    resources.py validate --k8s-version 1.32.0 --crd-kinds crd-kinds.txt \
        --crd-out crd.json FILE...

Every YAML document of every FILE is either
  - a custom kind listed in crd-kinds.txt: written to --crd-out (a JSON list
    of {file, index, apiVersion, kind, name, module, object}) for
    crd-validate.mjs, or
  - a core kind: validated here by kubernetes-validate's strict schemas for
    that Kubernetes version (unknown fields are errors, like the API server's
    strict field validation), every error reported, or
  - unknown to both: an error, so nothing goes unvalidated.
--loose FILE... are the YAML files outside every kustomization: there a
document without apiVersion/kind (a plain rules file, a config) is skipped.
Exit status 1 when any document is wrong; the messages name the file, the
document's kind/name and the path inside it.
"""

import argparse
import json
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None], None
    except yaml.YAMLError as e:
        return [], f"not valid YAML: {e}"


def crd_table(path):
    table = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            api, kind, module = line.split()
            table[(api, kind)] = module
    return table


def where(err):
    return "/".join(str(p) for p in err.absolute_path) or "(top)"


def core_errors(doc, version):
    """Every strict-schema error of one core document (kubernetes-validate's
    schema lookup; its own validate() stops at the best match)."""
    try:
        kv.validate(doc, version, strict=True)
        return []
    except kv.SchemaNotFoundError as e:
        return [f"unknown kind: {e.message} (not a core kind and not in tools/k8s-check/crd-kinds.txt)"]
    except kv.ValidationError:
        pass
    # collect all errors with the same schema kubernetes-validate used
    import re
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    v = [x for x in kv.all_versions() if kv.major_minor(x) <= kv.major_minor(version)][-1]
    d = f"v{v}-local-strict"
    schema = kv.schema_contents(f"kubernetes-json-schema/{d}/{doc['kind'].lower()}-{api_version}.json", version)
    defs = kv.schema_contents(f"kubernetes-json-schema/{d}/_definitions.json", version)
    from referencing import Registry, Resource
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        # a oneOf/anyOf failure says little; its sub-errors say what is wrong
        if err.context:
            best = jsonschema.exceptions.best_match(err.context)
            out.append(f"{where(best)}: {best.message}")
        else:
            out.append(f"{where(err)}: {err.message}")
    return out


def validate(args):
    table = crd_table(args.crd_kinds)
    crds = []
    bad = 0
    count = 0
    loose = set(args.loose or [])
    for path in list(args.files) + list(args.loose or []):
        docs, problem = load_docs(path)
        if problem:
            print(f"check-k8s: schemas: {path}: {problem}", file=sys.stderr)
            bad += 1
            continue
        for i, doc in enumerate(docs):
            count += 1
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                if path in loose:
                    # a YAML file outside every kustomization that is no
                    # manifest (a plain rules file, a config): not ours here
                    count -= 1
                    continue
                print(f"check-k8s: schemas: {path}: document {i + 1}: not a Kubernetes object "
                      f"(no apiVersion/kind)", file=sys.stderr)
                bad += 1
                continue
            name = (doc.get("metadata") or {}).get("name", "?")
            ident = f"{doc['kind']}/{name} ({doc['apiVersion']})"
            key = (doc["apiVersion"], doc["kind"])
            group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
            if key in table:
                crds.append({"file": path, "index": i + 1, "apiVersion": doc["apiVersion"],
                             "kind": doc["kind"], "name": name, "module": table[key], "object": doc})
                continue
            if group.endswith("keda.sh") or group.endswith("coreos.com"):
                errs = [f"unknown kind: {doc['kind']} of {doc['apiVersion']} is not in "
                        "tools/k8s-check/crd-kinds.txt"]
            else:
                errs = core_errors(doc, args.k8s_version)
            for e in errs:
                print(f"check-k8s: schemas: {path}: {ident}: {e}", file=sys.stderr)
            bad += bool(errs)
    with open(args.crd_out, "w", encoding="utf-8") as f:
        json.dump(crds, f)
    core = count - len(crds)
    if bad:
        print(f"check-k8s: schemas: {bad} invalid document(s) of {count}", file=sys.stderr)
        return 1
    print(f"check-k8s: schemas: core kinds ok ({core} documents, Kubernetes {args.k8s_version} strict); "
          f"{len(crds)} custom resource(s) go to the CRD validators", file=sys.stderr)
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--k8s-version", required=True)
    v.add_argument("--crd-kinds", required=True)
    v.add_argument("--crd-out", required=True)
    v.add_argument("--loose", nargs="*", help="YAML files outside every kustomization: "
                   "documents without apiVersion/kind in them are skipped")
    v.add_argument("files", nargs="*")
    args = p.parse_args()
    sys.exit(validate(args))


if __name__ == "__main__":
    main()
