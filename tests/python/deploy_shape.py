"""Checks the shape of registro's deployments (SPEC "Beyond one machine"), with no cluster:
the Kubernetes manifests of deploy/kubernetes/ and the Swarm stack compose/stack.yml.

Usage: python deploy_shape.py REPO_ROOT

Prints one `ok <check>` line per check that holds and `FAIL <check>: <why>` per one that does
not; exits non-zero when any failed. (Strict schema validation is kubernetes-validate's job,
run by tests/deploy.rs; this is what a schema cannot say: replica counts, probes on the
--health-listen port, the PodDisruptionBudget's selector, the Secret volumes, non-root, the
arguments.)
"""

import re
import sys
from pathlib import Path

import yaml

root = Path(sys.argv[1])
kube = root / "deploy" / "kubernetes"
failed = 0


def check(what, cond, why=""):
    global failed
    if cond:
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}: {why}")


def arg_value(args, flag):
    """The value of --flag in a container's args (`--flag=v` or `--flag v`), else None."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a[len(flag) + 1 :]
    return None


# --- Kubernetes -------------------------------------------------------------------------------
kustomization = yaml.safe_load((kube / "kustomization.yaml").read_text())
listed = kustomization.get("resources", [])
on_disk = sorted(p.name for p in kube.glob("*.yaml") if p.name != "kustomization.yaml")
check(
    "kustomization.yaml lists every manifest of deploy/kubernetes/",
    sorted(listed) == on_disk,
    f"listed {sorted(listed)}, on disk {on_disk}",
)

objects = {}
for name in listed:
    for doc in yaml.safe_load_all((kube / name).read_text()):
        if doc:
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
for kind, name in [
    ("StatefulSet", "datanode"),
    ("Service", "datanode"),
    ("PodDisruptionBudget", "datanode"),
    ("Deployment", "headnode"),
    ("Service", "headnode"),
    ("Service", "headnode-headless"),
]:
    check(f"{kind} {name} exists", (kind, name) in objects, f"kinds: {sorted(objects)}")
if failed:
    sys.exit(1)

sts = objects[("StatefulSet", "datanode")]
dep = objects[("Deployment", "headnode")]
svc_dn = objects[("Service", "datanode")]
svc_hn = objects[("Service", "headnode")]
svc_hh = objects[("Service", "headnode-headless")]
pdb = objects[("PodDisruptionBudget", "datanode")]

check("StatefulSet datanode: at least 3 replicas", sts["spec"].get("replicas", 1) >= 3)
check(
    "StatefulSet datanode: serviceName is the headless Service datanode",
    sts["spec"].get("serviceName") == "datanode"
    and svc_dn["spec"].get("clusterIP") == "None",
)
check(
    "StatefulSet datanode: volumeClaimTemplates",
    bool(sts["spec"].get("volumeClaimTemplates")),
)
check("Deployment headnode: at least 2 replicas", dep["spec"].get("replicas", 1) >= 2)
check(
    "Service headnode-headless: headless, not-ready addresses published (headnodes are ready only after datanodes register)",
    svc_hh["spec"].get("clusterIP") == "None" and svc_hh["spec"].get("publishNotReadyAddresses") is True,
)


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


check(
    "Service headnode selects the headnode pods",
    labels_match({"matchLabels": svc_hn["spec"]["selector"]}, dep["spec"]["template"]["metadata"]["labels"]),
)
check(
    "PodDisruptionBudget datanode selects the datanode pods, at most one unavailable",
    labels_match(pdb["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    and (pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable", 0) >= 2),
    str(pdb["spec"]),
)

for workload, role in [(sts, "datanode"), (dep, "headnode")]:
    what = f"{workload['kind']} {workload['metadata']['name']}"
    pod = workload["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c.get("args", [])
    psc = pod.get("securityContext", {})
    csc = c.get("securityContext", {})
    check(f"{what}: runs as non-root", csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True and psc.get("runAsUser", 0) != 0)
    check(f"{what}: read-only root filesystem", csc.get("readOnlyRootFilesystem") is True)
    check(f"{what}: no privilege escalation", csc.get("allowPrivilegeEscalation") is False)
    check(f"{what}: drops ALL capabilities", csc.get("capabilities", {}).get("drop") == ["ALL"])
    res = c.get("resources", {})
    check(
        f"{what}: cpu and memory requests and limits",
        all(k in res.get(t, {}) for t in ("requests", "limits") for k in ("cpu", "memory")),
        str(res),
    )
    health = arg_value(args, "--health-listen")
    check(f"{what}: --health-listen", health is not None, str(args))
    port = int(health.rsplit(":", 1)[1]) if health else None
    for probe in ("livenessProbe", "readinessProbe"):
        grpc = c.get(probe, {}).get("grpc")
        check(
            f"{what}: native gRPC {probe} on the --health-listen port",
            grpc is not None and grpc.get("port") == port,
            str(c.get(probe)),
        )
    check(
        f"{what}: ready means registro.v1.Store SERVING",
        c.get("readinessProbe", {}).get("grpc", {}).get("service") == "registro.v1.Store",
    )
    # Certificates: every --tls-* file lies in a mounted Secret volume.
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    tls = [arg_value(args, f) for f in ("--tls-ca", "--tls-cert", "--tls-key")]
    check(
        f"{what}: --tls-ca, --tls-cert, --tls-key from a Secret volume",
        all(t and mounts.get(t.rsplit("/", 1)[0]) in secrets for t in tls),
        f"tls {tls}, mounts {mounts}, secrets {secrets}",
    )
    check(
        f"{what}: certificates secret is registro-{role}-tls",
        f"registro-{role}-tls" in secrets.values(),
        str(secrets),
    )

dn_args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
check("datanode --name is the pod's name", arg_value(dn_args, "--name") == "$(POD_NAME)", str(dn_args))
check(
    "datanode --advertise is its stable DNS name",
    arg_value(dn_args, "--advertise") == "$(POD_NAME).datanode:6000",
    str(dn_args),
)
check(
    "datanode registers with every headnode (the headless Service)",
    re.fullmatch(r"(https://)?headnode-headless(\.[a-z0-9.-]+)?:5000", arg_value(dn_args, "--headnode") or "") is not None,
    str(dn_args),
)
check(
    "datanode's certificate is the one of its pod name",
    arg_value(dn_args, "--tls-cert") == "/certs/$(POD_NAME).pem",
)
dn_mounts = {m["mountPath"]: m["name"] for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
check(
    "datanode --data-dir is its volumeClaimTemplate",
    dn_mounts.get(arg_value(dn_args, "--data-dir")) == sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
)
hn_args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
check("headnode runs with --replicas 2", arg_value(hn_args, "--replicas") == "2", str(hn_args))

# --- Images -----------------------------------------------------------------------------------
dockerfile = (root / "compose" / "Dockerfile").read_text()
stages = re.split(r"(?m)^FROM ", dockerfile)[1:]
check(
    "every image stage runs as user 65532 (non-root)",
    stages and all(re.search(r"(?m)^USER 65532:65532$", s) for s in stages),
)

# --- Docker Swarm -----------------------------------------------------------------------------
stack = yaml.safe_load((root / "compose" / "stack.yml").read_text())
services = stack["services"]
check(
    "stack: headnode and datanode1-3",
    {"headnode", "datanode1", "datanode2", "datanode3"} <= set(services),
    str(sorted(services)),
)
for name, s in services.items():
    d = s.get("deploy", {})
    check(f"stack {name}: endpoint_mode dnsrr", d.get("endpoint_mode") == "dnsrr")
    check(f"stack {name}: restart policy", d.get("restart_policy", {}).get("condition") in ("any", "on-failure"))
    check(f"stack {name}: health check", bool(s.get("healthcheck", {}).get("test")))
    check(f"stack {name}: certificates as secrets", len(s.get("secrets", [])) == 3)
hn = services["headnode"]
check("stack headnode: mode global", hn["deploy"].get("mode") == "global")
check(
    "stack headnode: 5000 published in host mode",
    any(p.get("target") == 5000 and p.get("published") == 5000 and p.get("mode") == "host" for p in hn.get("ports", [])),
)
check("stack headnode: --replicas 2", arg_value(hn.get("command", []), "--replicas") == "2")
for n in (1, 2, 3):
    s = services[f"datanode{n}"]
    env = s.get("environment", {})
    vols = s.get("volumes", [])
    check(
        f"stack datanode{n}: stable name, own volume, registers with tasks.headnode",
        env.get("REGISTRO_NAME") == f"datanode{n}"
        and env.get("REGISTRO_ADVERTISE") == f"datanode{n}:6000"
        and env.get("REGISTRO_HEADNODE") == "https://tasks.headnode:5000"
        and vols == [f"datanode{n}-data:/data"],
        f"{env} {vols}",
    )

sys.exit(1 if failed else 0)
