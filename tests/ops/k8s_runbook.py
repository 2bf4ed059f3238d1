"""Every kubectl command in docs/RUNBOOK.md's "Kubernetes" section names
what the rendered manifests have (tests/ops/k8s.sh): the namespace, each
KIND/NAME (pods of a StatefulSet as NAME-<ordinal>), each -l selector (some
pod template carries it), each -k/-f path (exists in the repository).

Usage: k8s_runbook.py RUNBOOK.md RENDERED.yaml...
"""

import os
import re
import sys

import yaml

runbook, rendered = sys.argv[1], sys.argv[2:]
text = open(runbook, encoding="utf-8").read()
start = text.find("\n## Kubernetes\n")
if start < 0:
    print('docs/RUNBOOK.md has no "## Kubernetes" section')
    sys.exit(1)
end = text.find("\n## ", start + 1)
section = text[start:end if end > 0 else len(text)]
blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", section, re.S)
# Commands continued with a trailing backslash are one command.
lines = [l for b in blocks for l in re.sub(r"\\\n\s*", " ", b).splitlines()]
commands = [l.split("#", 1)[0] if not l.lstrip().startswith("#") else "" for l in lines]
commands = [c for c in commands if "kubectl " in c]

docs = [d for p in rendered for d in yaml.safe_load_all(open(p)) if d]
names = {}  # kind -> names
pod_labels = []
for d in docs:
    kind, name = d["kind"], d["metadata"]["name"]
    names.setdefault(kind, set()).add(name)
    if kind in ("Secret", "ConfigMap") and re.search(r"-[a-z0-9]{10}$", name):
        names[kind].add(name.rsplit("-", 1)[0])  # generated: addressed by prefix in prose only
    tpl = d.get("spec", {}).get("template", {})
    if tpl.get("metadata", {}).get("labels"):
        pod_labels.append(tpl["metadata"]["labels"])
    if kind == "StatefulSet":
        for i in range(d["spec"].get("replicas", 1)):
            names.setdefault("Pod", set()).add(f"{name}-{i}")

KINDS = {
    "deploy": "Deployment", "deployment": "Deployment", "deployments": "Deployment",
    "sts": "StatefulSet", "statefulset": "StatefulSet", "statefulsets": "StatefulSet",
    "job": "Job", "jobs": "Job", "svc": "Service", "service": "Service",
    "hpa": "HorizontalPodAutoscaler", "pdb": "PodDisruptionBudget", "ingress": "Ingress",
    "networkpolicy": "NetworkPolicy", "netpol": "NetworkPolicy", "configmap": "ConfigMap",
    "cm": "ConfigMap", "secret": "Secret", "pod": "Pod", "pods": "Pod", "serviceaccount": "ServiceAccount",
}
NAMESPACED = re.compile(r"kubectl (?:-n \S+ )?(get|rollout|logs|exec|port-forward|delete|wait|scale|describe|top|annotate|label|create|run|debug)\b")
problems = []
checked = 0
for c in commands:
    checked += 1
    for ns in re.findall(r"(?:-n|--namespace)[ =](\S+)", c):
        if ns != "exchange":
            problems.append(f"namespace {ns} (the manifests use exchange): {c.strip()}")
    if NAMESPACED.search(c) and not re.search(r"(?:-n|--namespace)[ =]exchange\b", c) and "--all-namespaces" not in c:
        problems.append(f"no -n exchange: {c.strip()}")
    # KIND/NAME outside file paths (deploy/k8s/... is a path, not a Deployment).
    bare = re.sub(r"(?:-k|-f|--kustomize|--filename)[ =]\S+|\S*\.(?:ya?ml|env|pem|key|sh)\b", " ", c)
    for kind, name in re.findall(r"(?<![\w./-])([a-z]+)/([a-z0-9][a-z0-9.-]*[a-z0-9])\b", bare):
        if kind in KINDS and not name.startswith("$"):
            if name not in names.get(KINDS[kind], set()):
                problems.append(f"{kind}/{name}: no {KINDS[kind]} {name} in the manifests: {c.strip()}")
    for path in re.findall(r"(?:-k|-f|--kustomize|--filename)[ =](\S+)", c):
        if not path.startswith(("-", "$", "/")) and not os.path.exists(path.rstrip(";")):
            problems.append(f"path {path} does not exist: {c.strip()}")
    for sel in re.findall(r"(?:-l|--selector)[ =](\S+)", c):
        pairs = dict(p.split("=", 1) for p in sel.strip("'\"").split(","))
        if not any(all(labels.get(k) == v for k, v in pairs.items()) for labels in pod_labels):
            problems.append(f"selector {sel} matches no pod: {c.strip()}")
if checked < 10:
    problems.append(f"only {checked} kubectl commands found in the Kubernetes section")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"{checked} kubectl commands: namespace, names, selectors and paths all in the manifests")
