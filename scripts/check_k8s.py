"""Invariants of the rendered Kubernetes manifests (scripts/check-k8s.sh renders them).

Usage: check_k8s.py RENDERED.yaml...  Exits non-zero, naming every broken invariant.
"""

import sys
import tomllib

import yaml

errors = []


def fail(where, message):
    errors.append(f"{where}: {message}")


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    configmaps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    pdbs = by_kind.get("PodDisruptionBudget", [])
    statefulsets = by_kind.get("StatefulSet", [])
    nameserver_pods = set()
    for sts in statefulsets:
        if sts["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "nameserver":
            for i in range(sts["spec"].get("replicas", 1)):
                nameserver_pods.add(f'{sts["metadata"]["name"]}-{i}.{sts["spec"]["serviceName"]}')

    for sts in statefulsets:
        name = sts["metadata"]["name"]
        where = f"{path}: StatefulSet {name}"
        spec = sts["spec"]
        replicas = spec.get("replicas", 1)
        pod = spec["template"]
        if spec.get("podManagementPolicy") != "Parallel":
            fail(where, "podManagementPolicy must be Parallel (no member is Ready without a quorum)")
        headless = services.get(spec["serviceName"])
        if headless is None:
            fail(where, f"serviceName {spec['serviceName']} is not a Service here")
        else:
            if headless["spec"].get("clusterIP") != "None":
                fail(where, "its Service must be headless (clusterIP: None)")
            if headless["spec"].get("publishNotReadyAddresses") is not True:
                fail(where, "its Service must publish not-ready addresses (peers meet before quorum)")
            if not labels_match(headless["spec"]["selector"], pod["metadata"]["labels"]):
                fail(where, "its Service does not select its pods")
        security = pod["spec"].get("securityContext", {})
        if security.get("runAsNonRoot") is not True:
            fail(where, "pods must run as non-root")
        container = pod["spec"]["containers"][0]
        image = container.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            fail(where, f"image {image!r} needs a version tag")
        csec = container.get("securityContext", {})
        if csec.get("readOnlyRootFilesystem") is not True or csec.get("allowPrivilegeEscalation") is not False:
            fail(where, "containers need a read-only root file system and no privilege escalation")
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            http = container.get(probe, {}).get("httpGet")
            if not http:
                fail(where, f"{probe} missing")
            elif http["port"] != "admin":
                fail(where, f"{probe} must use the admin port")
        if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/livez":
            fail(where, "liveness must be /livez (never depending on peers)")
        if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            fail(where, "readiness must be /readyz")
        config_volume = next(
            (v for v in pod["spec"].get("volumes", []) if v["name"] == "config"), None
        )
        if config_volume is None or config_volume["configMap"]["name"] not in configmaps:
            fail(where, "its config ConfigMap is missing")
            continue
        data = configmaps[config_volume["configMap"]["name"]]["data"]
        component = pod["metadata"]["labels"].get("app.kubernetes.io/component")
        config = tomllib.loads(data[f"{component}.toml"])
        if port_of(config["admin_listen"]) != ports.get("admin"):
            fail(where, "the admin port in the config and the container differ")
        if component != "broker":
            continue
        if pod["metadata"].get("annotations", {}).get("prometheus.io/port") != str(ports.get("admin")):
            fail(where, "the scrape annotation must name the admin port")
        if port_of(config["listen"]) != ports.get("client") or port_of(config["raft"]["listen"]) != ports.get("raft"):
            fail(where, "client or raft port differs between the config and the container")
        prestop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        if "transfer-leader" not in prestop:
            fail(where, "preStop must hand leadership over")
        if "--node-id-from-pod-name" not in container.get("args", []):
            fail(where, "node ids must come from the pod ordinals")
        if config.get("group") != name:
            fail(where, f"broker.toml names group {config.get('group')!r}")
        peers = config["raft"]["peers"]
        expected = [
            (i + 1, f"{name}-{i}.{spec['serviceName']}") for i in range(replicas)
        ]
        actual = [
            (p["id"], p["raft_addr"].rsplit(":", 1)[0]) for p in peers
        ]
        if actual != expected:
            fail(where, f"raft.peers must be the pods' headless names {expected}, not {actual}")
        for p in peers:
            if p["client_addr"].rsplit(":", 1)[0] != p["raft_addr"].rsplit(":", 1)[0]:
                fail(where, "each member advertises its headless DNS name (client_addr)")
        listed = {n.rsplit(":", 1)[0] for n in config.get("nameservers", [])}
        if listed != nameserver_pods:
            fail(where, f"nameservers {sorted(listed)} must be every nameserver pod {sorted(nameserver_pods)}")
        if replicas % 2 == 0:
            fail(where, "a group needs an odd number of voters")
        covering = [
            b for b in pdbs if labels_match(b["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
        ]
        if replicas >= 3:
            if len(covering) != 1:
                fail(where, f"needs exactly one PodDisruptionBudget, has {len(covering)}")
            elif covering[0]["spec"].get("maxUnavailable", 99) > (replicas - 1) // 2:
                fail(where, "its PodDisruptionBudget allows losing the quorum")


for rendered in sys.argv[1:]:
    check(rendered)
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"invariants hold in {len(sys.argv) - 1} rendered overlay(s)")
