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
  check_manifests.py cluster      every workload with [cache] backend = "s3":
                                  several replicas, no persistent volume, a
                                  headless Service on the peer port, ports
                                  and mounts that match its config, each
                                  pod's advertise_url and replica_id, and the
                                  Secrets it needs created as its file says

Prints every finding and exits 1 when there is one.
"""

import json
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib

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

# What the kubelet would put in the environment for each valueFrom source,
# for check-config to run with.
FIELD_VALUES = {
    "status.podIP": "10.1.2.3",
    "status.hostIP": "192.0.2.10",
    "metadata.name": "regcache-cluster-6f7c9d-x2k4p",
    "metadata.namespace": "default",
    "spec.nodeName": "node-1",
}


def container_env(c):
    """The container's environment as the kubelet sets it: valueFrom
    resolved to stand-ins, $(VAR) expanded from the variables before it."""
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), e["value"])
        elif "fieldRef" in e.get("valueFrom", {}):
            value = FIELD_VALUES[e["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            value = "test-" + e["valueFrom"]["secretKeyRef"]["key"]
        else:
            raise SystemExit(f"container {c['name']}: env {e['name']} has no value this check knows")
        env[e["name"]] = value
    return env


def secret_mounts(spec, c):
    """Mount paths of the container's Secret volumes."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return [m["mountPath"] for m in c.get("volumeMounts", []) if "secret" in volumes[m["name"]]]


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
                        "env": container_env(c),
                        "secret_mounts": secret_mounts(spec, c),
                        "host_network": bool(spec.get("hostNetwork")),
                    }
                )
    if not out:
        fail("deploy/kubernetes", "no workload mounts a regcache.toml at /etc/regcache")
    print(json.dumps(out))

# --- cluster ---------------------------------------------------------------


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def created_secrets(path):
    """{name: {keys}} of the `kubectl create secret generic NAME
    --from-literal=KEY=... --from-file=KEY=...` commands in a file's
    comments (continuation lines joined)."""
    text = (ROOT / path).read_text()
    comments = "\n".join(line.lstrip("# ") for line in text.splitlines() if line.lstrip().startswith("#"))
    comments = comments.replace("\\\n", " ")
    out = {}
    for m in re.finditer(r"kubectl create secret generic ([a-z0-9-]+)([^\n]*)", comments):
        out[m[1]] = set(re.findall(r"--from-(?:literal|file)=([A-Za-z0-9_.-]+)=", m[2]))
    return out


def cluster():
    docs = documents()
    maps = {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == "ConfigMap"}
    secrets = {d["metadata"]["name"]: set(d.get("data", {})) | set(d.get("stringData", {}))
               for _, d in docs if d.get("kind") == "Secret"}
    services = [(p, d) for p, d in docs if d.get("kind") == "Service"]
    found = 0
    for path, doc, spec in pod_templates(docs):
        where = f"{path} {doc['kind']}/{doc['metadata']['name']}"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            cfg_mount = mounts.get("/etc/regcache")
            if not cfg_mount or "configMap" not in volumes[cfg_mount["name"]]:
                continue
            config = tomllib.loads(maps[volumes[cfg_mount["name"]]["configMap"]["name"]]["data"]["regcache.toml"])
            if config.get("cache", {}).get("backend") != "s3":
                continue
            found += 1
            cw = f"{where} container {c['name']}"
            env = container_env(c)
            s3 = config["cache"].get("s3", {})
            cl = config.get("cluster", {})
            if doc["kind"] != "Deployment" or doc["spec"].get("replicas", 1) < 2:
                fail(where, "a shared tier example runs as a Deployment of several replicas")
            # The local tier goes with the pod: the bucket holds the rest.
            for v in spec.get("volumes", []):
                if "persistentVolumeClaim" in v or "hostPath" in v:
                    fail(where, f"volume {v['name']} is persistent: the local tier is an emptyDir")
            cache_dir = config.get("cache_dir", "/var/cache/regcache")
            cache = mounts.get(cache_dir)
            if not cache or "emptyDir" not in volumes[cache["name"]]:
                fail(cw, f"cache_dir {cache_dir} is not an emptyDir mount")
            # The ports the config listens on are the container's, by name.
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            peer_port = port_of(cl.get("peer_listen", "127.0.0.1:5002"))
            if not cl.get("peer_listen", "").startswith("0.0.0.0:"):
                fail(cw, f"peer_listen {cl.get('peer_listen')!r} is not reachable from other pods")
            for name, address in (("registry", config.get("listen")), ("metrics", config.get("metrics_listen")),
                                  ("peer", cl.get("peer_listen"))):
                if address is None or ports.get(name) != port_of(address):
                    fail(cw, f"container port {name} is {ports.get(name)}, the config listens on {address}")
            # Each pod advertises its own address, on the peer port.
            url = env.get("REGCACHE_CLUSTER__ADVERTISE_URL", cl.get("advertise_url", ""))
            if url != f"http://{FIELD_VALUES['status.podIP']}:{peer_port}":
                fail(cw, f"advertise_url {url!r} is not http://$(POD_IP):{peer_port} from status.podIP")
            if env.get("REGCACHE_CLUSTER__REPLICA_ID", cl.get("replica_id")) != FIELD_VALUES["metadata.name"]:
                fail(cw, "replica_id is not the pod's name (REGCACHE_CLUSTER__REPLICA_ID from metadata.name)")
            # A headless Service publishes the peer port of each pod.
            labels = doc["spec"]["template"]["metadata"]["labels"]
            headless = [
                d for _, d in services
                if d["spec"].get("clusterIP") == "None" and selects(d["spec"]["selector"], labels)
                and any(p.get("targetPort") == "peer" and p.get("port") == peer_port for p in d["spec"]["ports"])
            ]
            if not headless:
                fail(where, f"no headless Service publishes its peer port {peer_port}")
            for _, d in services:
                if d["spec"].get("clusterIP") != "None" and selects(d["spec"]["selector"], labels):
                    if any(p.get("targetPort") == "peer" for p in d["spec"]["ports"]):
                        fail(f"Service/{d['metadata']['name']}", "publishes the peer port behind a virtual IP")
            # The files the config names are keys of mounted Secrets, and
            # every Secret the pod uses is created (here, or as its file says).
            known = dict(created_secrets(path))
            known.update(secrets)
            used = []
            for key in ("secret_access_key_file", "peer_token_file"):
                file = (s3 if key.startswith("secret") else cl).get(key)
                if not file:
                    fail(cw, f"{key} is not set: the Secret must be a mounted file")
                    continue
                directory, name = file.rsplit("/", 1)
                m = mounts.get(directory)
                secret = m and volumes[m["name"]].get("secret")
                if not secret:
                    fail(cw, f"{key} {file}: {directory} is not a Secret mount")
                    continue
                items = {i["path"]: i["key"] for i in secret.get("items", [])}
                used.append((secret["secretName"], items.get(name, name)))
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.append((ref["name"], ref["key"]))
            if not s3.get("access_key_id") and "AWS_ACCESS_KEY_ID" not in env:
                fail(cw, "no access key id: access_key_id or AWS_ACCESS_KEY_ID")
            for name, key in used:
                if name not in known:
                    fail(cw, f"Secret {name} is neither in deploy/kubernetes nor created by a command in {path}")
                elif key not in known[name]:
                    fail(cw, f"Secret {name} has no key {key} (it has {sorted(known[name])})")
            print(json.dumps({"workload": where, "secrets": sorted(set(n for n, _ in used))}))
    if not found:
        fail("deploy/kubernetes", 'no workload runs [cache] backend = "s3"')
    if any(d.get("kind") == "PersistentVolumeClaim" for p, d in docs if p.parts[:3] == ("deploy", "kubernetes", "cluster")):
        fail("deploy/kubernetes/cluster", "holds a PersistentVolumeClaim")


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
    elif cmd == "cluster":
        cluster()
    else:
        sys.exit(f"unknown command {cmd}")
    for f in findings:
        print(f, file=sys.stderr)
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
