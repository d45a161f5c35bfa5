"""Grafana dashboard check for tools/check-k8s (check 4).

    dashboard.py --promtool PROMTOOL --work DIR genfleet.json

- the file is JSON, an object with `__inputs` (so it imports with a
  datasource prompt), `templating.list` holding a `datasource` variable,
  and `panels`; no panel, target or variable names a datasource by a fixed
  uid (only variables such as ${datasource}, and Grafana's built-ins);
- every PromQL expression (each panel's `targets[].expr`, nested rows
  included, and each query variable's `label_values(...)`/`query_result(...)`
  inner expression) with Grafana's variables replaced by harmless values is
  parsed by promtool: they are written as one recording rule each, in a group
  named after the panel, to a rules file, and `promtool check rules` reads it
  (it parses every expression with Prometheus' own parser).
Exit status 1 with messages naming the panel and the expression.
"""

import argparse
import json
import re
import subprocess
import sys

import yaml

DURATION_VARS = {"__interval", "__rate_interval", "__range", "__auto_interval", "interval",
                 "__range_s", "__range_ms", "__interval_ms"}
NUMERIC_VARS = {"__range_s": "3600", "__range_ms": "3600000", "__interval_ms": "60000"}

VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def say(msg):
    print(f"check-k8s: dashboard: {msg}", file=sys.stderr)


def substitute(expr, variables):
    """Replaces Grafana variables with values PromQL accepts where Grafana's
    own would go: durations for interval variables, a variable's current
    value when it has a plain one, else a label-value-like word."""

    def value(name):
        if name in NUMERIC_VARS:
            return NUMERIC_VARS[name]
        if name in DURATION_VARS:
            return "5m"
        var = variables.get(name)
        if var is not None:
            if var.get("type") == "interval":
                return "5m"
            cur = (var.get("current") or {}).get("value")
            if isinstance(cur, list):
                cur = cur[0] if cur else None
            if isinstance(cur, str) and cur and not cur.startswith("$") and cur != "$__all":
                return cur
        return "x"

    return VAR_RE.sub(lambda m: value(m.group(1) or m.group(2) or m.group(3)), expr)


BUILTIN_DATASOURCES = {"-- Grafana --", "-- Mixed --", "-- Dashboard --", "grafana"}


def datasources(node, where="dashboard"):
    """(where, value) of every "datasource" field: panels, targets,
    variables, annotations."""
    if isinstance(node, dict):
        label = where
        if "title" in node and isinstance(node.get("title"), str) and "type" in node:
            label = f"panel {node['title']!r}"
        elif "name" in node and isinstance(node.get("name"), str):
            label = f"{where} {node['name']!r}"
        for k, v in node.items():
            if k == "datasource" and v is not None:
                yield label, v
            elif k != "__inputs":
                yield from datasources(v, label)
    elif isinstance(node, list):
        for v in node:
            yield from datasources(v, where)


def walk_panels(panels, out):
    for p in panels or []:
        if not isinstance(p, dict):
            continue
        out.append(p)
        walk_panels(p.get("panels"), out)


def variable_queries(templating):
    for var in templating:
        if var.get("type") != "query":
            continue
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if not isinstance(q, str) or not q.strip():
            continue
        m = re.match(r"^\s*label_values\((.*),\s*[\w$]+\s*\)\s*$", q, re.S)
        if m:
            yield var.get("name", "?"), m.group(1)
            continue
        if re.match(r"^\s*label_values\(\s*[\w$]+\s*\)\s*$", q):
            continue  # label_values(label): no expression
        if re.match(r"^\s*(label_names|metrics)\(", q):
            continue
        m = re.match(r"^\s*query_result\((.*)\)\s*$", q, re.S)
        yield var.get("name", "?"), (m.group(1) if m else q)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--promtool", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("dashboard")
    args = p.parse_args()
    path = args.dashboard

    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        say(f"{path}: not valid JSON: {e}")
        return 1
    problems = []
    if not isinstance(dash, dict):
        say(f"{path}: not a JSON object")
        return 1
    if not isinstance(dash.get("__inputs"), list) or not dash["__inputs"]:
        problems.append("no __inputs (an exported dashboard lists its datasource inputs there)")
    templating = (dash.get("templating") or {}).get("list")
    if not isinstance(templating, list):
        problems.append("no templating.list")
        templating = []
    if not any(v.get("type") == "datasource" for v in templating if isinstance(v, dict)):
        problems.append("templating has no datasource variable")
    panels = []
    walk_panels(dash.get("panels"), panels)
    if not panels:
        problems.append("no panels")
    variables = {v.get("name"): v for v in templating if isinstance(v, dict)}
    for where, ds in datasources(dash):
        uid = ds.get("uid") if isinstance(ds, dict) else ds
        if isinstance(uid, str) and not uid.startswith("$") and uid not in BUILTIN_DATASOURCES:
            problems.append(f"{where}: datasource {uid!r} is hard-coded (use the datasource "
                            "variable, ${datasource}, so the dashboard imports anywhere)")

    exprs = []  # (where, original, substituted)
    for panel in panels:
        title = panel.get("title") or f"id {panel.get('id', '?')}"
        for t in panel.get("targets") or []:
            if not isinstance(t, dict):
                continue
            expr = t.get("expr")
            if expr is None:
                continue
            where = f"panel {title!r} (id {panel.get('id', '?')}) target {t.get('refId', '?')}"
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where}: empty expr")
                continue
            exprs.append((where, expr, substitute(expr, variables)))
    for name, q in variable_queries([v for v in templating if isinstance(v, dict)]):
        exprs.append((f"variable {name!r} query", q, substitute(q, variables)))
    if not exprs:
        problems.append("no PromQL expressions found in panels' targets")

    for prob in problems:
        say(f"{path}: {prob}")

    groups = []
    for i, (where, _orig, expr) in enumerate(exprs):
        groups.append({"name": f"expr{i}: {where}",
                       "rules": [{"record": f"dashboard:expr{i}", "expr": expr}]})
    rules = f"{args.work}/dashboard.rules.yaml"
    with open(rules, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": groups}, f, sort_keys=False, width=1 << 20)
    if groups:
        r = subprocess.run([args.promtool, "check", "rules", rules], capture_output=True, text=True)
        if r.returncode != 0:
            out = (r.stdout + r.stderr).strip()
            failed = set()
            for m in re.finditer(r'group "expr(\d+):', out):
                failed.add(int(m.group(1)))
            for i in sorted(failed):
                where, orig, expr = exprs[i]
                say(f"{path}: {where}: PromQL does not parse: {orig!r}")
            say("promtool said:\n    " + out.replace("\n", "\n    "))
            problems.append("promql")
    if problems:
        return 1
    say(f"{path}: ok ({len(panels)} panels, {len(exprs)} PromQL expressions parsed by promtool)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
