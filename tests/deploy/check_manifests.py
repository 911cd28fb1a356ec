"""Checks of deploy/kubernetes/ for tests/deploy.rs, run with the
target/test-venv interpreter (.ci/install-test-venv): PyYAML and
kubernetes-validate live there.

  check_manifests.py schemas      built-in kinds against the Kubernetes schemas
                                  (strict), CRDs (ServiceMonitor,
                                  PrometheusRule) structurally
  check_manifests.py pods UID GID every pod runs as the image's user, safely
  check_manifests.py generated    the PrometheusRule and the dashboard
                                  ConfigMap are what gen-prometheusrule makes
                                  of config/, and carry the same rules
  check_manifests.py configs      prints, as JSON, each ConfigMap's
                                  regcache.toml with the environment of the
                                  pods that mount it

Prints every finding and exits 1 when there is one.
"""

import json
import pathlib
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
ADMIN_PORT = 9090

findings = []


def fail(where, message):
    findings.append(f"{where}: {message}")


def documents():
    """(file, document) for every YAML document under deploy/kubernetes/."""
    out = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.relative_to(ROOT), doc))
    return out


def pod_templates(docs):
    for path, doc in docs:
        if doc.get("kind") in ("Deployment", "DaemonSet", "StatefulSet"):
            yield path, doc, doc["spec"]["template"]["spec"]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


# --- schemas ---------------------------------------------------------------

CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
GROUP_KEYS = {"name", "interval", "rules", "limit", "partial_response_strategy"}


def check_service_monitor(where, doc, docs):
    spec = doc.get("spec", {})
    unknown = set(spec) - {"jobLabel", "selector", "endpoints", "namespaceSelector"}
    if unknown:
        fail(where, f"unknown spec keys {sorted(unknown)}")
    match = spec.get("selector", {}).get("matchLabels") or {}
    if not match:
        fail(where, "spec.selector.matchLabels is empty: it would select every Service")
    services = [
        d for _, d in docs if d.get("kind") == "Service" and selects(match, d["metadata"].get("labels", {}))
    ]
    if not services:
        fail(where, f"selects no Service in deploy/kubernetes ({match})")
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        fail(where, "no endpoints")
    for svc in services:
        name = svc["metadata"]["name"]
        ports = {p.get("name") for p in svc["spec"]["ports"]}
        for ep in endpoints:
            if ep.get("port") not in ports:
                fail(where, f"endpoint port {ep.get('port')!r} is not a port of Service {name}")
            if ep.get("path", "/metrics") != "/metrics":
                fail(where, f"endpoint path {ep.get('path')!r}")
        # The shipped alerts select job="regcache".
        job_label = spec.get("jobLabel")
        job = svc["metadata"].get("labels", {}).get(job_label) if job_label else name
        if job != "regcache":
            fail(where, f"Service {name} would be scraped as job={job!r}, the alerts expect job=\"regcache\"")


def check_prometheus_rule(where, doc):
    groups = doc.get("spec", {}).get("groups")
    if not isinstance(groups, list) or not groups:
        fail(where, "spec.groups is not a non-empty list")
        return
    for g in groups:
        if set(g) - GROUP_KEYS:
            fail(where, f"group {g.get('name')}: unknown keys {sorted(set(g) - GROUP_KEYS)}")
        if not isinstance(g.get("name"), str) or not isinstance(g.get("rules"), list):
            fail(where, f"group {g!r:.80} needs a name and a rules list")
            continue
        for r in g["rules"]:
            if set(r) - RULE_KEYS:
                fail(where, f"rule {r.get('alert')}: unknown keys {sorted(set(r) - RULE_KEYS)}")
            if ("alert" in r) == ("record" in r) or not isinstance(r.get("expr"), (str, int)):
                fail(where, f"rule {r!r:.80} needs alert or record, and expr")


def schemas():
    docs = documents()
    for path, doc in docs:
        where = f"{path} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key == ("monitoring.coreos.com/v1", "ServiceMonitor"):
            check_service_monitor(where, doc, docs)
        elif key == ("monitoring.coreos.com/v1", "PrometheusRule"):
            check_prometheus_rule(where, doc)
        else:
            try:
                kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(where, f"{'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                fail(where, f"no schema: {e}")


# --- pods ------------------------------------------------------------------


def pods(uid, gid):
    docs = documents()
    templates = list(pod_templates(docs))
    if not templates:
        fail("deploy/kubernetes", "no workload")
    for path, doc, spec in templates:
        where = f"{path} {doc['kind']}/{doc['metadata']['name']}"
        sc = spec.get("securityContext", {})
        want = {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid, "fsGroup": gid}
        for k, v in want.items():
            if sc.get(k) != v:
                fail(where, f"securityContext.{k} is {sc.get(k)!r}, the image's USER needs {v!r}")
        # Service links put REGCACHE_* variables in the environment, which
        # regcache reads as config keys.
        if spec.get("enableServiceLinks") is not False:
            fail(where, "enableServiceLinks must be false: REGCACHE_PORT etc. would stop regcache")
        for c in spec.get("containers", []):
            cw = f"{where} container {c['name']}"
            csc = c.get("securityContext", {})
            if csc.get("runAsNonRoot") is False or csc.get("runAsUser") == 0:
                fail(cw, "runs as root")
            if csc.get("allowPrivilegeEscalation") is not False:
                fail(cw, "allowPrivilegeEscalation is not false")
            if not c.get("resources", {}).get("requests") or not c.get("resources", {}).get("limits"):
                fail(cw, "no resource requests and limits")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            if ADMIN_PORT in ports.values():
                fail(cw, f"declares the admin port {ADMIN_PORT}")
            for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                if get.get("path") != path_:
                    fail(cw, f"{probe} is not GET {path_}")
                port = get.get("port")
                if port not in ports and port not in ports.values():
                    fail(cw, f"{probe} port {port!r} is not a container port")
                if ports.get(port, port) == ADMIN_PORT:
                    fail(cw, f"{probe} uses the admin port")
    for path, doc in docs:
        if doc.get("kind") != "Service":
            continue
        where = f"{path} Service/{doc['metadata']['name']}"
        targets = [t for _, t, s in templates if selects(doc["spec"]["selector"], t["spec"]["template"]["metadata"]["labels"])]
        if not targets:
            fail(where, "selects no workload")
        for p in doc["spec"]["ports"]:
            if ADMIN_PORT in (p.get("port"), p.get("targetPort")) or p.get("name") == "admin":
                fail(where, f"exposes the admin port: {p}")
            for t in targets:
                names = {cp["name"] for c in t["spec"]["template"]["spec"]["containers"] for cp in c.get("ports", [])}
                if p.get("targetPort") not in names:
                    fail(where, f"targetPort {p.get('targetPort')!r} is no named port of {t['metadata']['name']}")


# --- generated -------------------------------------------------------------


def generated():
    gen = DEPLOY / "gen-prometheusrule"
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, str(gen), out], check=True)
        for name in ("prometheusrule.yaml", "grafana-dashboard.yaml"):
            committed = DEPLOY / "monitoring" / name
            if not committed.exists() or committed.read_text() != (pathlib.Path(out) / name).read_text():
                fail(committed.relative_to(ROOT), "differs from what gen-prometheusrule makes: re-run it")
    # And what it made means the same as the sources, read as YAML.
    alerts = yaml.safe_load((ROOT / "config" / "prometheus" / "regcache-alerts.yml").read_text())
    rule = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())
    if rule.get("spec") != alerts:
        fail("monitoring/prometheusrule.yaml", "spec is not config/prometheus/regcache-alerts.yml")
    dashboard = (ROOT / "config" / "grafana" / "regcache.json").read_text()
    cm = yaml.safe_load((DEPLOY / "monitoring" / "grafana-dashboard.yaml").read_text())
    if cm["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
        fail("monitoring/grafana-dashboard.yaml", 'no label grafana_dashboard: "1"')
    if json.loads(cm["data"]["regcache.json"]) != json.loads(dashboard):
        fail("monitoring/grafana-dashboard.yaml", "data is not config/grafana/regcache.json")


# --- configs ---------------------------------------------------------------


def configs():
    docs = documents()
    maps = {d["metadata"]["name"]: (p, d) for p, d in docs if d.get("kind") == "ConfigMap"}
    out = []
    for path, doc, spec in pod_templates(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                cm = volumes[m["name"]].get("configMap")
                if not cm or m["mountPath"] != "/etc/regcache":
                    continue
                _, map_doc = maps[cm["name"]]
                out.append(
                    {
                        "workload": f"{path} {doc['kind']}/{doc['metadata']['name']}",
                        "toml": map_doc["data"]["regcache.toml"],
                        "env": {e["name"]: e["value"] for e in c.get("env", [])},
                        "host_network": bool(spec.get("hostNetwork")),
                    }
                )
    if not out:
        fail("deploy/kubernetes", "no workload mounts a regcache.toml at /etc/regcache")
    print(json.dumps(out))


def main():
    cmd = sys.argv[1]
    if cmd == "schemas":
        schemas()
    elif cmd == "pods":
        pods(int(sys.argv[2]), int(sys.argv[3]))
    elif cmd == "generated":
        generated()
    elif cmd == "configs":
        configs()
    else:
        sys.exit(f"unknown command {cmd}")
    for f in findings:
        print(f, file=sys.stderr)
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
