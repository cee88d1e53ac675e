"""deploy/kubernetes/replicated: the broker as its own Deployment with Redis, as
kustomize renders the overlay. Schema-valid (kubernetes-validate, strict; the
ServiceMonitor against the fields of its CRD), selectors that match, a
NetworkPolicy that admits only the front-end proxy, the named internal callers and
Prometheus, and settings that load as the broker would read them."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from pydantic import SecretStr

from app.settings import Settings
from tests.deploy.kustomize import render
from tests.deploy.support import KUBERNETES_DIR

OVERLAY = KUBERNETES_DIR / "replicated"
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
FILE_REFERENCE = re.compile(r"\$\{file:([^}]*)\}")
SECRET_SETTINGS = {"BROKER_REDIS_URL", "BROKER_CACHE_ENCRYPTION_KEY"}

# The fields of monitoring.coreos.com/v1 ServiceMonitor that the example uses, typed as
# the Prometheus Operator CRD types them; anything else is refused (strict, like
# kubernetes-validate), so a typo cannot pass as an unknown field.
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}
DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


def resources() -> list[dict[str, Any]]:
    return render(OVERLAY)


def named(kind: str, name: str) -> dict[str, Any]:
    found = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}"
    return found[0]


def broker_deployment() -> dict[str, Any]:
    return named("Deployment", "token-broker")


def broker_container() -> dict[str, Any]:
    pod = broker_deployment()["spec"]["template"]["spec"]
    return dict(next(c for c in pod["containers"] if c["name"] == "token-broker"))


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, "these manifests use matchLabels only"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def secret_value(name: str, key: str) -> str:
    return str(named("Secret", name)["stringData"][key])


# --- schemas ---------------------------------------------------------------------------


def test_overlay_renders_every_part_of_the_replicated_mode() -> None:
    kinds = sorted(f"{r['kind']}/{r['metadata']['name']}" for r in resources())
    assert kinds == [
        "ConfigMap/token-broker-policy",
        "Deployment/token-broker",
        "Deployment/token-broker-redis",
        "HorizontalPodAutoscaler/token-broker",
        "NetworkPolicy/token-broker",
        "NetworkPolicy/token-broker-redis",
        "PodDisruptionBudget/token-broker",
        "Secret/token-broker-redis",
        "Secret/token-broker-secrets",
        "Service/token-broker",
        "Service/token-broker-redis",
        "ServiceMonitor/token-broker",
    ]
    for document in resources():
        assert document["metadata"]["labels"]["app.kubernetes.io/part-of"] == "token-broker"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_overlay_is_valid_in_strict_mode(version: str) -> None:
    for document in resources():
        if document["kind"] == "ServiceMonitor":
            jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).validate(document)
        else:
            kubernetes_validate.validate(document, version, strict=True)


def test_service_monitor_schema_is_strict() -> None:
    jsonschema.Draft7Validator.check_schema(SERVICE_MONITOR_SCHEMA)
    monitor = copy.deepcopy(named("ServiceMonitor", "token-broker"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).validate(monitor)


def test_images_carry_a_pinned_tag() -> None:
    for deployment in (broker_deployment(), named("Deployment", "token-broker-redis")):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            _, _, tag = container["image"].partition(":")
            assert tag and tag != "latest", container["image"]


# --- the broker Deployment ---------------------------------------------------------------


def test_broker_runs_replicated_and_locked_down() -> None:
    deployment = broker_deployment()
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = broker_container()
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert all("subPath" not in mount for mount in container["volumeMounts"])


def test_redis_settings_come_from_the_secret_never_from_a_literal() -> None:
    env = {item["name"]: item for item in broker_container()["env"]}
    assert all(name.startswith("BROKER_") for name in env)
    for name in SECRET_SETTINGS:
        assert "value" not in env[name], name
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in named("Secret", ref["name"])["stringData"], name


def test_settings_load_from_the_rendered_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for item in broker_container()["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            monkeypatch.setenv(item["name"], secret_value(ref["name"], ref["key"]))
    settings = Settings()
    assert isinstance(settings.redis_url, SecretStr)
    assert settings.host == "0.0.0.0"
    assert settings.workers == 1
    key = settings.cache_encryption_key
    assert key is not None and len(key.get_secret_value().encode()) >= 32


def test_broker_reads_the_base_policy_and_secret_where_it_mounts_them() -> None:
    container = broker_container()
    pod = broker_deployment()["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    policy = named("ConfigMap", "token-broker-policy")
    config_path = Path(next(i["value"] for i in container["env"] if i["name"] == "BROKER_CONFIG"))
    config_volume = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == policy["metadata"]["name"]
    assert mounts[config_volume] == str(config_path.parent)
    assert config_path.name in policy["data"]
    secret_volume = next(n for n, v in volumes.items() if "secret" in v)
    assert volumes[secret_volume]["secret"]["secretName"] == "token-broker-secrets"
    for path in FILE_REFERENCE.findall(policy["data"][config_path.name]):
        assert str(Path(path).parent) == mounts[secret_volume], path


# --- Service, PDB, HPA, ServiceMonitor -----------------------------------------------------


def test_service_selects_the_brokers_by_a_named_port() -> None:
    service = named("Service", "token-broker")["spec"]
    assert selects({"matchLabels": service["selector"]}, pod_labels(broker_deployment()))
    ports = {p["name"] for p in broker_container()["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= ports


def test_disruption_budget_and_autoscaler_fit_together() -> None:
    pdb = named("PodDisruptionBudget", "token-broker")["spec"]
    hpa = named("HorizontalPodAutoscaler", "token-broker")["spec"]
    assert selects(pdb["selector"], pod_labels(broker_deployment()))
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "token-broker",
    }
    # At the autoscaler's minimum, a drain still leaves at least two brokers serving.
    assert hpa["minReplicas"] - pdb["maxUnavailable"] >= 2
    assert hpa["minReplicas"] <= broker_deployment()["spec"]["replicas"] <= hpa["maxReplicas"]


def test_service_monitor_scrapes_metrics_through_the_service() -> None:
    monitor = named("ServiceMonitor", "token-broker")["spec"]
    service = named("Service", "token-broker")
    assert selects(monitor["selector"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"


# --- the network ---------------------------------------------------------------------


def ingress_peers(policy: dict[str, Any]) -> list[dict[str, Any]]:
    peers = []
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "a rule without 'from' admits every pod in the cluster"
        peers.extend(rule["from"])
    return peers


def test_network_policy_admits_only_the_proxy_named_callers_and_prometheus() -> None:
    policy = named("NetworkPolicy", "token-broker")
    assert selects(policy["spec"]["podSelector"], pod_labels(broker_deployment()))
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    admitted = []
    for peer in ingress_peers(policy):
        assert "ipBlock" not in peer
        pods = peer["podSelector"]
        assert pods, "an empty podSelector admits every pod of the namespace"
        if "matchExpressions" in pods:
            (expression,) = pods["matchExpressions"]
            assert expression["operator"] == "In" and expression["values"], "callers by name"
            admitted.extend(expression["values"])
        else:
            admitted.append(pods["matchLabels"]["app.kubernetes.io/name"])
        if "namespaceSelector" in peer:
            assert peer["namespaceSelector"]["matchLabels"], "never every namespace"
    assert admitted == ["ingress-nginx", "reporting-api", "billing-worker", "prometheus"]
    for rule in policy["spec"]["ingress"]:
        assert [p["port"] for p in rule["ports"]] == ["http"]


def test_network_policy_egress_is_dns_redis_and_https_out_of_cluster() -> None:
    egress = named("NetworkPolicy", "token-broker")["spec"]["egress"]
    ports = sorted(p["port"] for rule in egress for p in rule["ports"])
    assert ports == [53, 53, 443, 6379]
    redis_rule = next(r for r in egress if r["ports"][0]["port"] == 6379)
    redis_pods = pod_labels(named("Deployment", "token-broker-redis"))
    assert selects(redis_rule["to"][0]["podSelector"], redis_pods)
    https = next(r for r in egress if r["ports"][0]["port"] == 443)["to"][0]["ipBlock"]
    assert "10.0.0.0/8" in https["except"]


def test_redis_admits_only_the_brokers() -> None:
    policy = named("NetworkPolicy", "token-broker-redis")["spec"]
    assert selects(policy["podSelector"], pod_labels(named("Deployment", "token-broker-redis")))
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}
    assert selects(peer["podSelector"], pod_labels(broker_deployment()))
    assert not selects(peer["podSelector"], pod_labels(named("Deployment", "token-broker-redis")))


# --- Redis -------------------------------------------------------------------------------


def test_redis_url_names_the_redis_service_and_its_password() -> None:
    url = urlsplit(secret_value("token-broker-redis", "redis-url"))
    service = named("Service", "token-broker-redis")["spec"]
    assert url.scheme == "redis"
    assert url.hostname == "token-broker-redis"
    assert url.port == service["ports"][0]["port"]
    assert url.password == secret_value("token-broker-redis", "redis-password")
    redis = named("Deployment", "token-broker-redis")["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][:2] == ["--requirepass", "$(REDIS_PASSWORD)"]
    password = next(e for e in redis["env"] if e["name"] == "REDIS_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {
        "name": "token-broker-redis",
        "key": "redis-password",
    }


def test_redis_keeps_nothing_on_disk_and_is_locked_down() -> None:
    pod = named("Deployment", "token-broker-redis")["spec"]["template"]["spec"]
    (redis,) = pod["containers"]
    args = redis["args"]
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    assert "--maxmemory" in args
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False


def test_redis_secret_holds_only_placeholders() -> None:
    for key, value in named("Secret", "token-broker-redis")["stringData"].items():
        assert "replace-me" in value, key
