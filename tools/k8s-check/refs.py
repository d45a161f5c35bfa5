"""Cross-references between rendered manifests (tools/check-k8s, check 5).

    refs.py RENDERED.yaml...

Schemas say each object is well formed; this says they point at each other:
  - a ScaledObject's scaleTargetRef names a Deployment (or the kind it says)
    that some rendered kustomization ships, and each trigger's
    authenticationRef a TriggerAuthentication;
  - within one rendered kustomization: a Service's and a
    PodDisruptionBudget's selector matches the pod template of a Deployment
    (or StatefulSet); a Service's named targetPort is a container port of
    those pods; a ServiceMonitor that selects one of our Services scrapes
    port names that Service has; a pod's probes name container ports it
    has; its configMap volumes and its serviceAccountName exist there.
A namespace left unset (applied with -n) matches any namespace. Secrets are
not checked: the manifests mount Secrets the operator creates.
Exit status 1 with a message naming the rendered file and the objects.
"""

import sys

import yaml


def say(msg):
    print(f"check-k8s: refs: {msg}", file=sys.stderr)


def ns_ok(a, b):
    return a is None or b is None or a == b


def pod_spec(obj):
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return (spec.get("template") or {})
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {})
    return None


def matches(selector, labels):
    """A label selector ({matchLabels: ...}) against labels; matchExpressions
    are not evaluated (none are used here)."""
    ml = (selector or {}).get("matchLabels") or {}
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


def main(files):
    objs = []  # (file, obj)
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for d in yaml.safe_load_all(fh):
                if isinstance(d, dict) and d.get("kind"):
                    objs.append((f, d))
    bad = 0

    def meta(o):
        m = o.get("metadata") or {}
        return m.get("name"), m.get("namespace")

    def ident(o):
        n, ns = meta(o)
        return f"{o['kind']}/{n}" + (f" (namespace {ns})" if ns else "")

    def exists(kind, name, ns, pool):
        return any(o.get("kind") == kind and meta(o)[0] == name and ns_ok(meta(o)[1], ns) for _, o in pool)

    # ---- KEDA references, across every rendered kustomization
    for f, o in objs:
        if o["kind"] != "ScaledObject":
            continue
        name, ns = meta(o)
        spec = o.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        kind = ref.get("kind", "Deployment")
        if ref.get("name") and not exists(kind, ref["name"], ns, objs):
            say(f"{f}: {ident(o)}: scaleTargetRef names {kind}/{ref['name']}, which no rendered "
                "kustomization ships")
            bad += 1
        for i, t in enumerate(spec.get("triggers") or []):
            a = t.get("authenticationRef") or {}
            if not a.get("name"):
                continue
            akind = a.get("kind", "TriggerAuthentication")
            aname_ns = None if akind == "ClusterTriggerAuthentication" else ns
            if not exists(akind, a["name"], aname_ns, objs):
                say(f"{f}: {ident(o)}: triggers[{i}].authenticationRef names {akind}/{a['name']}, "
                    "which no rendered kustomization ships")
                bad += 1

    # ---- within each rendered kustomization
    by_file = {}
    for f, o in objs:
        by_file.setdefault(f, []).append(o)
    for f, group in by_file.items():
        workloads = [o for o in group if pod_spec(o) is not None]
        services = [o for o in group if o["kind"] == "Service"]

        def pods_of(selector, ns):
            out = []
            for w in workloads:
                if w["kind"] in ("Job", "CronJob"):
                    continue
                labels = ((pod_spec(w).get("metadata") or {}).get("labels") or {})
                if ns_ok(meta(w)[1], ns) and matches(selector, labels):
                    out.append(w)
            return out

        def container_ports(w):
            ports = set()
            for c in (pod_spec(w).get("spec") or {}).get("containers") or []:
                for p in c.get("ports") or []:
                    if p.get("name"):
                        ports.add(p["name"])
            return ports

        for o in group:
            kind = o["kind"]
            name, ns = meta(o)
            spec = o.get("spec") or {}
            if kind in ("Service", "PodDisruptionBudget") and spec.get("selector"):
                sel = {"matchLabels": spec["selector"]} if kind == "Service" else spec["selector"]
                pods = pods_of(sel, ns)
                if not pods and workloads:
                    say(f"{f}: {ident(o)}: selector {sel.get('matchLabels')} matches no pod template "
                        "of this kustomization")
                    bad += 1
                if kind == "Service" and pods:
                    names = set().union(*(container_ports(w) for w in pods))
                    for p in spec.get("ports") or []:
                        tp = p.get("targetPort")
                        if isinstance(tp, str) and tp not in names:
                            say(f"{f}: {ident(o)}: port {p.get('name', '?')} targets container port "
                                f"{tp!r}, which the selected pods do not declare ({sorted(names)})")
                            bad += 1
            if kind == "ServiceMonitor":
                sel = spec.get("selector") or {}
                ours = [s for s in (x for _, x in objs if x["kind"] == "Service")
                        if matches(sel, (s.get("metadata") or {}).get("labels") or {})]
                if ours:
                    names = {p.get("name") for s in ours for p in (s.get("spec") or {}).get("ports") or []}
                    for i, ep in enumerate(spec.get("endpoints") or []):
                        if ep.get("port") and ep["port"] not in names:
                            say(f"{f}: {ident(o)}: endpoints[{i}].port {ep['port']!r} is not a port "
                                f"name of the Services it selects ({sorted(n for n in names if n)})")
                            bad += 1
            ps = pod_spec(o)
            if ps is None:
                continue
            pspec = ps.get("spec") or {}
            sa = pspec.get("serviceAccountName")
            if sa and sa != "default" and not exists("ServiceAccount", sa, ns, [(f, x) for x in group]):
                say(f"{f}: {ident(o)}: serviceAccountName {sa!r} is not in this kustomization")
                bad += 1
            for v in pspec.get("volumes") or []:
                cm = (v.get("configMap") or {}).get("name")
                if cm and not (v["configMap"].get("optional")) and \
                        not exists("ConfigMap", cm, ns, [(f, x) for x in group]):
                    say(f"{f}: {ident(o)}: volume {v.get('name')!r} mounts ConfigMap {cm!r}, "
                        "which this kustomization does not ship")
                    bad += 1
            for c in (pspec.get("containers") or []) + (pspec.get("initContainers") or []):
                names = {p.get("name") for p in c.get("ports") or [] if p.get("name")}
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    pr = c.get(probe) or {}
                    for how in ("httpGet", "tcpSocket", "grpc"):
                        port = (pr.get(how) or {}).get("port")
                        if isinstance(port, str) and port not in names:
                            say(f"{f}: {ident(o)}: container {c.get('name')!r} {probe} uses port "
                                f"{port!r}, which the container does not declare ({sorted(names)})")
                            bad += 1
    if bad:
        say(f"{bad} broken reference(s)")
        return 1
    say(f"ok ({len(objs)} objects: ScaledObject targets and authentication, selectors, "
        "named ports, ConfigMaps and ServiceAccounts)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
