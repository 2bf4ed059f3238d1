"""What docs/RUNBOOK.md and the services rely on in the rendered Kubernetes
manifests (tests/ops/k8s.sh).

Usage: k8s_structure.py PROD.yaml MIGRATE.yaml PROD_WITH_PUBLIC_MARKETDATA.yaml VERSION_KUSTOMIZATION.yaml
Prints a one-line summary; exit 1 with every problem listed.
"""

import re
import sys

import yaml

prod_path, migrate_path, md_path, version_path = sys.argv[1:5]
load = lambda p: [d for d in yaml.safe_load_all(open(p)) if d]  # noqa: E731
prod, migrate, md = load(prod_path), load(migrate_path), load(md_path)
version = yaml.safe_load(open(version_path))["images"][0]
image = f"{version['newName']}:{version['newTag']}"
problems = []

# name: (kind, port, the env vars it takes from the pod name)
WORKLOADS = {
    "gateway": ("Deployment", 8080, ["GATEWAY_CONSUMER_NAME"]),
    "order": ("Deployment", 8091, []),
    "matching": ("StatefulSet", 8092, ["MATCHING_CONSUMER_NAME"]),
    "clearing": ("StatefulSet", 8093, ["CLEARING_CONSUMER_NAME"]),
    "marketdata": ("StatefulSet", 8094, ["MARKETDATA_CONSUMER_NAME", "MARKETDATA_CONSUMER_GROUP"]),
    "wallet": ("Deployment", 8095, []),
}
SECRET_NAMES = re.compile(r"TOKEN|SECRET|KEY|PASSWORD|DB_URL|REDIS_URL")


def index(docs):
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


objs = index(prod)
for d in prod + migrate:
    if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "exchange":
        problems.append(f"{d['kind']}/{d['metadata']['name']}: namespace {d['metadata'].get('namespace')!r}, want exchange")
    if d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") != "exchange":
        problems.append(f"{d['kind']}/{d['metadata']['name']}: no label app.kubernetes.io/part-of=exchange")

configmaps = [d for d in prod if d["kind"] == "ConfigMap"]
config = configmaps[0]["data"] if len(configmaps) == 1 else {}
if len(configmaps) != 1 or not configmaps[0]["metadata"]["name"].startswith("exchange-config-"):
    problems.append(f"want one generated ConfigMap exchange-config-<hash>, got {[c['metadata']['name'] for c in configmaps]}")
if config.get("APP_ENV") != "prod":
    problems.append("exchange-config: APP_ENV is not prod")
if "APP_VERSION" in config:
    problems.append("exchange-config sets APP_VERSION: the image carries it, so it always equals the tag")
for key in config:
    if SECRET_NAMES.search(key) and key not in ("REDIS_KEY_PREFIX",):
        problems.append(f"exchange-config holds {key}: secrets belong in a Secret")
secrets = {d["metadata"]["name"].rsplit("-", 1)[0]: d for d in prod if d["kind"] == "Secret"}
if set(secrets) != {"exchange-secrets", "exchange-redis"}:
    problems.append(f"want generated Secrets exchange-secrets and exchange-redis, got {sorted(secrets)}")
else:
    have = set(secrets["exchange-secrets"].get("data", {}))
    for key in ("DB_URL", "INTERNAL_TOKEN", "AUTH_TOKEN_SECRET", "ADMIN_TOKEN", "METRICS_TOKEN", "API_KEY_ENCRYPTION_KEY"):
        if key not in have:
            problems.append(f"exchange-secrets lacks {key} (secrets.env.example)")
    have = set(secrets["exchange-redis"].get("data", {}))
    for name in WORKLOADS:
        if f"REDIS_URL_{name.upper()}" not in have:
            problems.append(f"exchange-redis lacks REDIS_URL_{name.upper()} (redis.env.example)")


def pod_checks(label, spec, container):
    psc = spec.get("securityContext", {})
    if not psc.get("runAsNonRoot") or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{label}: pod securityContext lacks runAsNonRoot / seccomp RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{label}: mounts a service account token")
    sc = container.get("securityContext", {})
    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
            and sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("runAsNonRoot")):
        problems.append(f"{label}: container securityContext is not non-root, read-only root, no escalation, drop ALL")
    res = container.get("resources", {})
    for side in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(res.get(side, {})):
            problems.append(f"{label}: no cpu/memory {side}")
    if container.get("image") != image:
        problems.append(f"{label}: image {container.get('image')}, want {image} (overlays/production/version)")
    for e in container.get("env", []):
        if "value" in e and SECRET_NAMES.search(e["name"]) and e["value"] not in ("$(POD_NAME)",):
            problems.append(f"{label}: {e['name']} has a literal value (secrets only by reference)")


for name, (kind, port, from_pod) in WORKLOADS.items():
    w = objs.get((kind, name))
    if not w:
        problems.append(f"{kind}/{name} missing")
        continue
    label = f"{kind}/{name}"
    tpl = w["spec"]["template"]
    spec = tpl["spec"]
    containers = spec["containers"]
    if len(containers) != 1 or containers[0]["name"] != name:
        problems.append(f"{label}: want one container named {name}")
        continue
    c = containers[0]
    pod_checks(label, spec, c)
    if c.get("args") != [name]:
        problems.append(f"{label}: args {c.get('args')}, want [{name}] (the exchange subcommand)")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports.get("http") != port:
        problems.append(f"{label}: port http is {ports.get('http')}, want {port}")
    addr_key = "GATEWAY_HTTP_ADDR" if name == "gateway" else f"{name.upper()}_HTTP_ADDR"
    if config.get(addr_key) != f"0.0.0.0:{port}":
        problems.append(f"exchange-config {addr_key}={config.get(addr_key)}, want 0.0.0.0:{port}")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") != "http":
            problems.append(f"{label}: {probe} is not GET {path} on port http ({get})")
    env = {e["name"]: e for e in c.get("env", [])}
    if env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        problems.append(f"{label}: POD_NAME is not the downward API's metadata.name")
    for var in from_pod:
        if env.get(var, {}).get("value") != "$(POD_NAME)":
            problems.append(f"{label}: {var} is not $(POD_NAME) (unique per replica)")
    names = [e["name"] for e in c.get("env", [])]
    if "POD_NAME" in names and any(names.index(v) < names.index("POD_NAME") for v in from_pod if v in names):
        problems.append(f"{label}: a variable uses $(POD_NAME) before it is defined")
    ref = env.get("REDIS_URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
    if not str(ref.get("name", "")).startswith("exchange-redis-") or ref.get("key") != f"REDIS_URL_{name.upper()}":
        problems.append(f"{label}: REDIS_URL is not its own REDIS_URL_{name.upper()} from exchange-redis ({ref})")
    refs = [(list(s)[0], list(s.values())[0]["name"]) for s in c.get("envFrom", [])]
    if not any(k == "configMapRef" and n.startswith("exchange-config-") for k, n in refs) or \
            not any(k == "secretRef" and n.startswith("exchange-secrets-") for k, n in refs):
        problems.append(f"{label}: envFrom is not the generated exchange-config and exchange-secrets ({refs})")
    labels = tpl["metadata"]["labels"]
    if labels.get("app.kubernetes.io/name") != name:
        problems.append(f"{label}: pod label app.kubernetes.io/name is not {name}")
    svc = objs.get(("Service", name))
    if not svc:
        problems.append(f"Service/{name} missing")
    else:
        if any(labels.get(k) != v for k, v in svc["spec"]["selector"].items()):
            problems.append(f"Service/{name}: selector {svc['spec']['selector']} does not select the pods")
        for p in svc["spec"]["ports"]:
            if p["targetPort"] not in ports:
                problems.append(f"Service/{name}: targetPort {p['targetPort']} is not a container port")
    pdb = objs.get(("PodDisruptionBudget", name))
    if not pdb or any(labels.get(k) != v for k, v in pdb["spec"]["selector"]["matchLabels"].items()):
        problems.append(f"PodDisruptionBudget/{name} missing or selects other pods")
    if kind == "StatefulSet" and w["spec"].get("serviceName") != name:
        problems.append(f"{label}: serviceName is not {name}")

gw = objs.get(("Deployment", "gateway"), {})
if "replicas" in gw.get("spec", {}):
    problems.append("Deployment/gateway sets replicas: the HorizontalPodAutoscaler owns them")
hpa = objs.get(("HorizontalPodAutoscaler", "gateway"))
if not hpa or hpa["spec"]["scaleTargetRef"] != {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"} \
        or hpa["spec"].get("minReplicas", 1) < 2:
    problems.append("HorizontalPodAutoscaler/gateway missing, not on Deployment/gateway, or minReplicas < 2")
if objs.get(("StatefulSet", "matching"), {}).get("spec", {}).get("replicas") != 2:
    problems.append("StatefulSet/matching does not run 2 replicas")
for name in ("order", "clearing", "marketdata", "wallet"):
    if objs.get((WORKLOADS[name][0], name), {}).get("spec", {}).get("replicas", 1) < 2:
        problems.append(f"{name}: fewer than 2 replicas in production")
for service, key in (("order", "ORDER_SERVICE_URL"), ("marketdata", "MARKETDATA_URL"), ("wallet", "WALLET_SERVICE_URL")):
    if config.get(key) != f"http://{service}:{WORKLOADS[service][1]}":
        problems.append(f"exchange-config {key}={config.get(key)}, want http://{service}:{WORKLOADS[service][1]}")

deny = objs.get(("NetworkPolicy", "default-deny"))
if not deny or deny["spec"].get("podSelector") not in ({}, None) or sorted(deny["spec"].get("policyTypes", [])) != ["Egress", "Ingress"]:
    problems.append("NetworkPolicy/default-deny (all pods, Ingress and Egress) missing")


def exposed(docs):
    """Services an Ingress routes to, and the pods a NetworkPolicy admits from another namespace."""
    o = index(docs)
    routed = set()
    for d in docs:
        if d["kind"] != "Ingress":
            continue
        for rule in d["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                b = path["backend"]["service"]
                routed.add(b["name"])
                svc = o.get(("Service", b["name"]))
                if not svc or b["port"].get("name") not in [p["name"] for p in svc["spec"]["ports"]]:
                    problems.append(f"Ingress/{d['metadata']['name']}: backend {b} is not a Service port")
                if path["path"] in ("/", "/metrics", "/admin", "/docs") or not path["path"].startswith(("/api", "/ws", "/stream")):
                    problems.append(f"Ingress/{d['metadata']['name']}: routes {path['path']} (only /api, /ws, /stream are public)")
    admitted = set()
    for d in docs:
        if d["kind"] != "NetworkPolicy":
            continue
        for rule in d["spec"].get("ingress", []):
            if any("namespaceSelector" in f and f["namespaceSelector"].get("matchLabels", {}).get("kubernetes.io/metadata.name") != "monitoring"
                   for f in rule.get("from", [])):
                admitted.add(d["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name"))
    return routed, admitted


for docs, want in ((prod, {"gateway"}), (md, {"gateway", "marketdata"})):
    routed, admitted = exposed(docs)
    if routed != want or admitted != want:
        problems.append(f"public: Ingress routes to {sorted(routed)}, NetworkPolicies admit from outside the namespace {sorted(admitted)}; want {sorted(want)}")
gw_np = objs.get(("NetworkPolicy", "gateway"), {})
gw_ports = sorted(p["port"] for r in gw_np.get("spec", {}).get("ingress", []) for p in r.get("ports", []))
if gw_ports != [8080, 8090]:
    problems.append(f"NetworkPolicy/gateway admits ports {gw_ports}, want [8080, 8090] (the admin port 8081 only through port-forward)")

job = index(migrate).get(("Job", "migrate"))
if not job:
    problems.append("Job/migrate missing from overlays/production/migrate")
else:
    spec = job["spec"]["template"]["spec"]
    c = spec["containers"][0]
    pod_checks("Job/migrate", spec, c)
    if c.get("args") != ["migrate"]:
        problems.append(f"Job/migrate: args {c.get('args')}, want [migrate]")
    ref = {e["name"]: e for e in c.get("env", [])}.get("DB_URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
    if not str(ref.get("name", "")).startswith("exchange-secrets-") or ref.get("key") != "DB_URL":
        problems.append(f"Job/migrate: DB_URL is not from the generated exchange-secrets ({ref})")
    if c.get("envFrom") or any(e["name"] not in ("DB_URL", "LOG_LEVEL") for e in c.get("env", [])):
        problems.append("Job/migrate: gets more than DB_URL and LOG_LEVEL")
    if job["spec"].get("backoffLimit") != 0:
        problems.append("Job/migrate: backoffLimit is not 0 (a failed migration is looked at, not retried)")
    msecret = [d["metadata"]["name"] for d in migrate if d["kind"] == "Secret" and d["metadata"]["name"].startswith("exchange-secrets-")]
    psecret = [d["metadata"]["name"] for d in prod if d["kind"] == "Secret" and d["metadata"]["name"].startswith("exchange-secrets-")]
    if msecret != psecret:
        problems.append(f"the Job's Secret {msecret} is not the services' {psecret}")
if any(d["kind"] == "Namespace" for d in migrate):
    problems.append("overlays/production/migrate holds the Namespace (deleting the Job's kustomization would delete it)")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"6 workloads ({image}), Services, PDBs, probes, consumer names from the pod name, own Redis URL, "
      "gateway HPA, default deny, only gateway (and opt-in marketdata) public, Job/migrate with DB_URL only")
