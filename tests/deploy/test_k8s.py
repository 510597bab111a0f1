"""deploy/k8s: both overlays render with kustomize and validate against Kubernetes 1.34's schemas
(offline, `kubernetes-validate --strict`), and hold what a cluster relies on: probes, resources, a
disruption budget and an autoscaler for every Deployment, the migrate and setup Jobs, network
policies, no credential in prod, and the console: HTTP behind an ingress, no database, no Secret.
Temporal's values set only keys its official chart has.

kubectl renders the overlays; where it is missing these tests fail (they do not skip): the manifests
are a deliverable `make test` checks, and a skip would let a broken one through unseen.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"
KUBERNETES_VERSION = "1.34.0"
IMAGE = "ghcr.io/memberops/memberops:0.1.0"
SERVICE_PORTS = {"tagging": 50051, "audience": 50052, "tasks": 50053, "journeys": 50054}
METRICS_PORT = 9100
# The operators' console: HTTP, reached through the cluster's ingress controller, a client of the four
# services; no database, no /metrics.
CONSOLE_PORT = 8088
CONSOLE_PEERS = ("tagging", "audience", "tasks", "journeys")
INGRESS_NAMESPACE = "ingress-nginx"
DEPLOYMENTS = sorted([*SERVICE_PORTS, "worker", "console"])

Manifest = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl is not installed: it renders deploy/k8s (`kubectl kustomize`). Install kubectl "
            "1.27 or later (the project's machines have /usr/bin/kubectl)."
        )
    return found


@functools.cache
def render(overlay: str) -> str:
    """The overlay as `kubectl apply -k` would send it (rendered once per test run)."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{done.stderr}"
    return done.stdout


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    assert VALIDATOR.exists(), f"{VALIDATOR} is missing: `make venv` installs kubernetes-validate"
    return subprocess.run(
        [str(VALIDATOR), "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass(frozen=True)
class Rendered:
    overlay: str
    text: str
    docs: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def named(self, kind: str, name: str) -> Manifest:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def config(self) -> Mapping[str, str]:
        (config_map,) = [
            doc for doc in self.of_kind("ConfigMap") if doc["metadata"]["name"].startswith("memberops-config")
        ]
        data: Mapping[str, str] = config_map["data"]
        return data


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    overlay: str = request.param
    text = render(overlay)
    return Rendered(overlay, text, [doc for doc in yaml.safe_load_all(text) if doc])


def pod_specs(rendered: Rendered) -> Iterator[tuple[str, Manifest]]:
    for kind in ("Deployment", "Job"):
        for doc in rendered.of_kind(kind):
            yield f"{kind} {doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def containers(spec: Manifest) -> list[Manifest]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def env_value(container: Manifest, name: str) -> Any:
    found = [item for item in container.get("env", []) if item["name"] == name]
    assert len(found) == 1, f"{container['name']}: {name} set {len(found)} times"
    return found[0].get("value", found[0].get("valueFrom"))


# --- validation ----------------------------------------------------------------------------------


def test_overlay_validates_for_kubernetes_1_34(rendered: Rendered, tmp_path: Path) -> None:
    path = tmp_path / f"{rendered.overlay}.yaml"
    path.write_text(rendered.text)
    done = validate(path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("unknown field", "'replicaz' was unexpected"),
        ("wrong type", "is not of type 'integer'"),
        ("missing required field", "'containers' is a required property"),
    ],
)
def test_validation_rejects_a_broken_resource(breakage: str, expected: str, tmp_path: Path) -> None:
    """The check above can fail: the prod render plus one broken Deployment does not validate."""
    text = render("prod")
    broken = copy.deepcopy(next(doc for doc in yaml.safe_load_all(text) if doc["kind"] == "Deployment"))
    broken["metadata"]["name"] = "broken"
    spec = broken["spec"]
    if breakage == "unknown field":
        spec["replicaz"] = 2
    elif breakage == "wrong type":
        spec["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "fifty"
    else:
        del spec["template"]["spec"]["containers"]
    path = tmp_path / "broken.yaml"
    path.write_text(text + "---\n" + yaml.safe_dump(broken))
    done = validate(path)
    assert done.returncode != 0, f"a {breakage} passed validation"
    assert expected in done.stdout + done.stderr


# --- structure -----------------------------------------------------------------------------------


def test_every_deployment_has_probes_resources_budget_and_autoscaler(rendered: Rendered) -> None:
    deployments = rendered.of_kind("Deployment")
    assert sorted(doc["metadata"]["name"] for doc in deployments) == DEPLOYMENTS
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
        assert "replicas" not in deployment["spec"], f"{name}: the autoscaler owns the replica count"
        (container,) = pod["spec"]["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in container, f"{name}: no {probe}"
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name}: {bound}"
        budgets = [
            pdb
            for pdb in rendered.of_kind("PodDisruptionBudget")
            if selects(pdb["spec"]["selector"]["matchLabels"], labels)
        ]
        assert len(budgets) == 1, f"{name}: {len(budgets)} PodDisruptionBudgets select its pods"
        scalers = [
            hpa
            for hpa in rendered.of_kind("HorizontalPodAutoscaler")
            if hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        ]
        assert len(scalers) == 1, f"{name}: {len(scalers)} autoscalers"
        (hpa,) = scalers
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert selects(hpa["metadata"]["labels"], labels)
        assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]
        low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
        assert 1 <= low < high
        if rendered.overlay == "prod":
            assert low >= 2, f"{name}: prod keeps two replicas, so a drain leaves one serving"


def test_services_listen_where_their_service_and_probes_point(rendered: Rendered) -> None:
    config = rendered.config()
    for name, port in SERVICE_PORTS.items():
        pod = rendered.named("Deployment", name)["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["args"] == [name]
        assert env_value(container, "MEMBEROPS_LISTEN_ADDRESS") == f"0.0.0.0:{port}"
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, f"{name}: {probe} is not a gRPC probe"
        service = rendered.named("Service", name)
        assert service["spec"]["type"] == "ClusterIP"
        # Headless, so gRPC's round_robin sees every replica (a virtual IP would pin a channel to one).
        assert service["spec"]["clusterIP"] == "None"
        assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, "grpc")]
        assert config[f"MEMBEROPS_{name.upper()}_ADDRESS"] == f"{name}:{port}"
    (worker,) = rendered.named("Deployment", "worker")["spec"]["template"]["spec"]["containers"]
    assert worker["args"] == ["worker"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert worker[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in worker["ports"]
    assert sorted(doc["metadata"]["name"] for doc in rendered.of_kind("Service")) == sorted(
        [*SERVICE_PORTS, "console"]
    )


def test_the_console_serves_http_behind_a_virtual_ip_with_no_secret(rendered: Rendered) -> None:
    config = rendered.config()
    pod = rendered.named("Deployment", "console")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["console"]
    assert env_value(container, "MEMBEROPS_CONSOLE_ADDRESS") == f"0.0.0.0:{CONSOLE_PORT}"
    assert container["ports"] == [{"name": "http", "containerPort": CONSOLE_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    # Behind the ingress that terminates TLS in prod, its cookies are Secure; dev is plain HTTP.
    secure = [item for item in container["env"] if item["name"] == "MEMBEROPS_CONSOLE_SECURE"]
    if rendered.overlay == "prod":
        assert secure == [{"name": "MEMBEROPS_CONSOLE_SECURE", "value": "1"}]
    else:
        assert secure == []
    # Operators sign in with their own token: no database URL, no token list, no Secret at all.
    assert not any("valueFrom" in item for item in container["env"])
    assert [source for source in container["envFrom"] if "configMapRef" not in source] == []
    for name in CONSOLE_PEERS:
        assert config[f"MEMBEROPS_{name.upper()}_ADDRESS"] == f"{name}:{SERVICE_PORTS[name]}"
    service = rendered.named("Service", "console")
    # A virtual IP: its client is the ingress controller, which balances requests itself.
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"].get("clusterIP") != "None"
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(CONSOLE_PORT, "http")]


def test_every_process_is_scraped_and_outlives_its_shutdown_grace(rendered: Rendered) -> None:
    config = rendered.config()
    assert config["MEMBEROPS_METRICS_ADDRESS"] == f"0.0.0.0:{METRICS_PORT}"
    grace = float(config["MEMBEROPS_SHUTDOWN_GRACE_SECONDS"])
    for deployment in rendered.of_kind("Deployment"):
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert pod["spec"]["terminationGracePeriodSeconds"] > grace + pause, deployment["metadata"]["name"]
        if deployment["metadata"]["name"] == "console":
            # The one process without /metrics: not annotated, so Prometheus scrapes no empty port.
            assert "annotations" not in pod["metadata"]
            assert METRICS_PORT not in {port["containerPort"] for port in container["ports"]}
            continue
        assert pod["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(METRICS_PORT),
            "prometheus.io/path": "/metrics",
        }
        assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in container["ports"]


def test_every_pod_runs_restricted(rendered: Rendered) -> None:
    for what, spec in pod_specs(rendered):
        assert spec["securityContext"]["runAsNonRoot"] is True, what
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, what
        assert spec["automountServiceAccountToken"] is False, what
        for container in containers(spec):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, what
            assert security["allowPrivilegeEscalation"] is False, what
            assert security["capabilities"] == {"drop": ["ALL"]}, what
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, what
            assert container["image"] == IMAGE, what
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), what
    (namespace,) = rendered.of_kind("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_jobs_migrate_then_set_up(rendered: Rendered) -> None:
    jobs = {doc["metadata"]["name"]: doc for doc in rendered.of_kind("Job")}
    assert sorted(jobs) == ["migrate", "setup"]
    for job in jobs.values():
        assert job["spec"]["backoffLimit"] > 0
        assert job["spec"]["ttlSecondsAfterFinished"] > 0
    migrate = jobs["migrate"]["spec"]["template"]["spec"]
    assert [c["args"] for c in containers(migrate)] == [["migrate"]]
    setup = jobs["setup"]["spec"]["template"]["spec"]
    # An init container finishes before the container starts: the search attributes exist before
    # the dispatcher starts anything.
    assert [c["args"] for c in setup["initContainers"]] == [["setup"]]
    assert [c["args"] for c in setup["containers"]] == [["dispatcher"]]


def test_network_policies_deny_by_default_and_allow_what_runs(rendered: Rendered) -> None:
    policies = {doc["metadata"]["name"]: doc["spec"] for doc in rendered.of_kind("NetworkPolicy")}
    deny = policies.pop("default-deny")
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    ingress_ports = {
        (peer_namespace(peer), port["port"])
        for spec in policies.values()
        for rule in spec.get("ingress", [])
        for peer in rule["from"]
        for port in rule["ports"]
    }
    assert ("monitoring", METRICS_PORT) in ingress_ports
    assert {(None, port) for port in SERVICE_PORTS.values()} <= ingress_ports
    assert (INGRESS_NAMESPACE, CONSOLE_PORT) in ingress_ports
    egress_ports = {
        port["port"]
        for spec in policies.values()
        for rule in spec.get("egress", [])
        for port in rule["ports"]
    }
    assert {53, 5432, 7233} <= egress_ports


def pod_selected(selector: Manifest, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects a pod with `labels`."""
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        present, value = expression["key"] in labels, labels.get(expression["key"])
        held = {
            "In": present and value in expression.get("values", []),
            "NotIn": value not in expression.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expression["operator"]]
        if not held:
            return False
    return True


def test_the_selector_check_reads_expressions() -> None:
    web = {"app.kubernetes.io/component": "web", "app.kubernetes.io/part-of": "memberops"}
    service = {**web, "app.kubernetes.io/component": "service"}
    not_web = {
        "matchLabels": {"app.kubernetes.io/part-of": "memberops"},
        "matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "NotIn", "values": ["web"]}],
    }
    assert pod_selected(not_web, service) and not pod_selected(not_web, web)
    assert pod_selected({}, web) and not pod_selected({"matchLabels": {"x": "y"}}, web)


def allowed(rendered: Rendered, labels: Mapping[str, str], direction: str) -> set[tuple[str | None, int]]:
    """(peer namespace, port) of every rule of `direction` ("ingress" or "egress") that a pod with
    `labels` gets; a rule without peers is any namespace ("*"), one without ports is port 0 (all)."""
    peers = "from" if direction == "ingress" else "to"
    return {
        (peer_namespace(peer) if peer is not None else "*", port["port"] if port is not None else 0)
        for doc in rendered.of_kind("NetworkPolicy")
        if pod_selected(doc["spec"]["podSelector"], labels)
        for rule in doc["spec"].get(direction, [])
        for peer in rule.get(peers) or [None]
        for port in rule.get("ports") or [None]
    }


def test_the_console_is_reached_only_from_the_ingress_and_reaches_only_its_services(
    rendered: Rendered,
) -> None:
    labels = rendered.named("Deployment", "console")["spec"]["template"]["metadata"]["labels"]
    ingress = allowed(rendered, labels, "ingress")
    assert {peer for peer, port in ingress if port in (CONSOLE_PORT, 0)} == {INGRESS_NAMESPACE}
    egress = allowed(rendered, labels, "egress")
    assert {port for _, port in egress} == {53, *(SERVICE_PORTS[name] for name in CONSOLE_PEERS)}
    # Each service port only towards that service's pods (in the namespace itself).
    egress_to_services = [
        (rule["to"], rule["ports"])
        for doc in rendered.of_kind("NetworkPolicy")
        if pod_selected(doc["spec"]["podSelector"], labels)
        for rule in doc["spec"].get("egress", [])
        if any(port["port"] in SERVICE_PORTS.values() for port in rule["ports"])
    ]
    assert sorted(
        (peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"], port["port"])
        for peers, ports in egress_to_services
        for peer in peers
        for port in ports
    ) == sorted((name, SERVICE_PORTS[name]) for name in CONSOLE_PEERS)
    # The services let it in: a rule of theirs names a pod like it in their namespace, on their port.
    for name in CONSOLE_PEERS:
        service = rendered.named("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert any(
            "namespaceSelector" not in peer
            and pod_selected(peer["podSelector"], labels)
            and SERVICE_PORTS[name] in {port["port"] for port in rule["ports"]}
            for doc in rendered.of_kind("NetworkPolicy")
            if pod_selected(doc["spec"]["podSelector"], service)
            for rule in doc["spec"].get("ingress", [])
            for peer in rule["from"]
        ), name
    # Narrowing the console left every other process its database, Temporal and DNS.
    for deployment in rendered.of_kind("Deployment"):
        if deployment["metadata"]["name"] != "console":
            others = allowed(rendered, deployment["spec"]["template"]["metadata"]["labels"], "egress")
            assert {53, 5432, 7233} <= {port for _, port in others}, deployment["metadata"]["name"]


def peer_namespace(peer: Manifest) -> str | None:
    """The namespace a NetworkPolicy peer names; None for the policy's own namespace, "*" for any."""
    if "namespaceSelector" not in peer:
        return None
    labels: Mapping[str, str] = peer["namespaceSelector"].get("matchLabels", {})
    return labels.get("kubernetes.io/metadata.name", "*")


def test_secrets_are_referenced_and_only_dev_renders_one(rendered: Rendered) -> None:
    secrets = rendered.of_kind("Secret")
    referenced = {
        item["valueFrom"]["secretKeyRef"]["name"]
        for _, spec in pod_specs(rendered)
        for container in containers(spec)
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    if rendered.overlay == "prod":
        assert secrets == [], "prod's Secret comes from the operator's secret manager, never from here"
        assert referenced == {"memberops-secrets"}
        assert "password" not in rendered.text.lower()
        return
    (secret,) = secrets
    assert referenced == {secret["metadata"]["name"]}  # kustomize's hashed name reached every pod
    assert set(secret["data"]) == {"DATABASE_URL", "MEMBEROPS_AUTH_TOKENS"}
    dev_values = (K8S / "overlays" / "dev" / "dev-secrets.env").read_text()
    assert "not-a-secret" in dev_values


def test_prod_spreads_every_deployment_over_nodes() -> None:
    text = render("prod")
    for doc in yaml.safe_load_all(text):
        if doc and doc["kind"] == "Deployment":
            spread = doc["spec"]["template"]["spec"]["topologySpreadConstraints"]
            keys = {(c["topologyKey"], c["whenUnsatisfiable"]) for c in spread}
            assert ("kubernetes.io/hostname", "DoNotSchedule") in keys, doc["metadata"]["name"]
            assert all("app.kubernetes.io/name" in c["matchLabelKeys"] for c in spread)


# --- Temporal's chart values ---------------------------------------------------------------------

# What deploy/k8s/temporal/*.yaml may set, derived from temporalio/helm-charts at commit
# e51b7344c9b2a04ee36b3ad52a13ffb688454fd7 (chart `temporal` 1.6.0, appVersion 1.31.2): keys of
# charts/temporal/values.yaml, the SQL datastore fields its comments and templates read
# (_helpers.tpl, _admintools-env.yaml), and the per-service `replicaCount` that
# templates/server-deployment.yaml reads. `*` is any name (a datastore), `[]` a list's items.
# OPAQUE keys hold Kubernetes objects the chart passes through as they are (toYaml).
SERVER_SERVICES = ("frontend", "history", "matching", "worker")
SQL_FIELDS = (
    *("pluginName", "databaseName", "connectAddr", "connectProtocol", "user"),
    *("existingSecret", "secretKey", "createDatabase", "manageSchema"),
    *("maxConns", "maxIdleConns", "maxConnLifetime"),
    *(
        "tls.enabled",
        "tls.caFile",
        "tls.certFile",
        "tls.keyFile",
        "tls.serverName",
        "tls.enableHostVerification",
    ),
)
CHART_KEYS = frozenset(
    {
        "server.replicaCount",
        "server.config.logLevel",
        "server.config.persistence.defaultStore",
        "server.config.persistence.visibilityStore",
        "server.config.persistence.numHistoryShards",
        *(f"server.config.persistence.datastores.*.sql.{field}" for field in SQL_FIELDS),
        "server.config.namespaces.create",
        "server.config.namespaces.useHelmHooks",
        "server.config.namespaces.namespace.[].name",
        "server.config.namespaces.namespace.[].retention",
        *(f"server.{service}.replicaCount" for service in SERVER_SERVICES),
        "admintools.enabled",
        "web.enabled",
        "web.replicaCount",
        "schema.useHelmHooks",
        "schema.backoffLimit",
        "schema.ttlSecondsAfterFinished",
    }
)
OPAQUE = frozenset(
    {
        "server.resources",
        "server.additionalVolumes",
        "server.additionalVolumeMounts",
        *(
            f"server.{service}.{key}"
            for service in SERVER_SERVICES
            for key in ("resources", "podDisruptionBudget", "topologySpreadConstraints", "affinity")
        ),
        "admintools.additionalVolumes",
        "admintools.additionalVolumeMounts",
        "admintools.resources",
        "web.resources",
        "web.podDisruptionBudget",
        "web.topologySpreadConstraints",
        "schema.resources",
    }
)
# The chart 1.x refuses these top-level keys (its removed subcharts; templates/_deprecations.tpl).
REMOVED_SUBCHARTS = ("cassandra", "elasticsearch", "prometheus", "grafana", "mysql", "postgresql")
TEMPORAL = K8S / "temporal"


def matches(path: tuple[str, ...], patterns: Iterable[str]) -> bool:
    return any(
        len(parts) == len(path) and all(p in ("*", k) for p, k in zip(parts, path, strict=True))
        for parts in (tuple(pattern.split(".")) for pattern in patterns)
    )


def value_paths(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every path a values document sets; a Kubernetes object under an OPAQUE key is one path."""
    if path and matches(path, OPAQUE):
        yield path
    elif isinstance(node, dict):
        for key, child in node.items():
            yield from value_paths(child, (*path, str(key)))
    elif isinstance(node, list):
        for item in node:
            yield from value_paths(item, (*path, "[]"))
    else:
        yield path


def unknown_keys(values: Manifest) -> list[str]:
    return [".".join(path) for path in value_paths(values) if not matches(path, CHART_KEYS | OPAQUE)]


def load_values(name: str) -> Manifest:
    values: Manifest = yaml.safe_load((TEMPORAL / name).read_text())
    return values


@pytest.mark.parametrize("name", ["values.yaml", "values-prod.yaml"])
def test_temporal_values_set_only_keys_of_the_chart(name: str) -> None:
    values = load_values(name)
    assert unknown_keys(values) == []
    assert not set(REMOVED_SUBCHARTS) & set(values), "chart 1.x fails on its removed subcharts' keys"


def test_the_key_check_catches_a_misspelling() -> None:
    values = load_values("values.yaml")
    values["server"]["config"]["persistance"] = values["server"]["config"].pop("persistence")
    values["web"]["replicas"] = 2
    values["cassandra"] = {"enabled": False}
    unknown = set(unknown_keys(values))
    assert {"cassandra.enabled", "web.replicas", "server.config.persistance.numHistoryShards"} <= unknown
    assert all(
        key.startswith(("cassandra.", "web.replicas", "server.config.persistance.")) for key in unknown
    )


def test_temporal_stores_are_external_postgres_with_secret_credentials() -> None:
    values = load_values("values.yaml")
    persistence = values["server"]["config"]["persistence"]
    shards = persistence["numHistoryShards"]
    assert shards >= 512 and shards & (shards - 1) == 0
    stores = persistence["datastores"]
    assert (
        {persistence["defaultStore"], persistence["visibilityStore"]}
        == set(stores)
        == {"default", "visibility"}
    )
    for store in stores.values():
        sql = store["sql"]
        assert sql["pluginName"] == "postgres12"
        assert sql["existingSecret"] and "password" not in sql
        assert sql["manageSchema"] is True  # the chart's schema Job sets up and updates the schema
    assert values["web"]["enabled"] is True and values["admintools"]["enabled"] is True
    prod = load_values("values-prod.yaml")
    assert "numHistoryShards" not in prod["server"]["config"].get("persistence", {}), "never changes"


def test_memberops_finds_the_temporal_the_chart_creates() -> None:
    config = Rendered("prod", "", [doc for doc in yaml.safe_load_all(render("prod")) if doc]).config()
    created = [ns["name"] for ns in load_values("values.yaml")["server"]["config"]["namespaces"]["namespace"]]
    assert config["TEMPORAL_NAMESPACE"] in created
    # Release `temporal` in namespace `temporal`: the chart names the frontend Service
    # <release>-frontend (templates/_helpers.tpl temporal.componentname).
    assert config["TEMPORAL_ADDRESS"] == "temporal-frontend.temporal.svc:7233"
