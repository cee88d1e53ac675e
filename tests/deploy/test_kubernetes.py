"""deploy/kubernetes, the sidecar mode: schema-valid manifests (kubernetes-validate,
strict, offline) as kustomize renders them, the sidecar's probes and security context,
a NetworkPolicy that keeps other pods off the broker, and a policy whose secrets are
mounted files. The replicated overlay is tested in test_kubernetes_replicated.py."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from app.config.loader import load_policy_text
from app.providers.databrain import DatabrainConfig
from tests.deploy.kustomize import KUSTOMIZATION, render
from tests.deploy.support import KUBERNETES_DIR, load_yaml, load_yaml_documents

# The oldest Kubernetes the example supports, and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
BROKER_CONTAINER = "token-broker"
RUNTIME_UID = 10001
FILE_REFERENCE = re.compile(r"\$\{file:([^}]*)\}")


def manifest_files() -> list[Path]:
    """Every manifest under deploy/kubernetes, both modes and their shared base."""
    return sorted(p for p in KUBERNETES_DIR.rglob("*.yaml") if p.name != KUSTOMIZATION)


def resources() -> list[dict[str, Any]]:
    """The sidecar mode as ``kubectl apply -k deploy/kubernetes`` would create it."""
    return render(KUBERNETES_DIR)


def resource(kind: str) -> dict[str, Any]:
    found = [r for r in resources() if r["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


@pytest.fixture
def pod_spec() -> dict[str, Any]:
    return dict(resource("Deployment")["spec"]["template"]["spec"])


@pytest.fixture
def broker(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == BROKER_CONTAINER)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def mount_path(container: dict[str, Any], volume: str) -> str:
    return str(next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume))


def volume_named(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in pod_spec["volumes"] if v["name"] == name)


def volume_of(pod_spec: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    """The pod volume that mounts the ConfigMap or Secret with this name."""
    ref = "name" if key == "configMap" else "secretName"
    return next(v for v in pod_spec["volumes"] if v.get(key, {}).get(ref) == name)


# --- schemas ---------------------------------------------------------------------------

# Kinds of the Kubernetes API itself; the ServiceMonitor (a CRD) has its own schema check.
BUILT_IN = [
    path
    for path in manifest_files()
    if all(doc["kind"] != "ServiceMonitor" for doc in load_yaml_documents(path))
]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", BUILT_IN, ids=lambda p: str(p.relative_to(KUBERNETES_DIR)))
def test_manifest_is_valid_in_strict_mode(path: Path, version: str) -> None:
    documents = load_yaml_documents(path)
    assert documents
    for document in documents:
        # A kind without a schema raises SchemaNotFoundError here (the CLI only warns).
        kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_sidecar_is_valid_in_strict_mode(version: str) -> None:
    rendered = resources()
    assert sorted(r["kind"] for r in rendered) == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "Secret",
    ]
    for document in rendered:
        kubernetes_validate.validate(document, version, strict=True)
        assert document["metadata"]["labels"]["app.kubernetes.io/part-of"] == "analytics-web"


def test_strict_validation_rejects_an_unknown_field() -> None:
    deployment = copy.deepcopy(resource("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_manifest_is_in_its_directorys_kustomization() -> None:
    for path in manifest_files():
        kustomization = load_yaml(path.parent / KUSTOMIZATION)
        assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        assert path.name in kustomization["resources"], f"{path} is in no kustomization"


def test_kustomization_images_name_the_deployments_images() -> None:
    kustomization = load_yaml(KUBERNETES_DIR / KUSTOMIZATION)
    images = {image["name"] for image in kustomization.get("images", [])}
    deployment_images = {
        c["image"].rsplit(":", 1)[0]
        for c in resource("Deployment")["spec"]["template"]["spec"]["containers"]
    }
    assert images <= deployment_images


# --- the network ---------------------------------------------------------------------


def test_network_policy_opens_the_broker_port_to_prometheus_only(
    pod_spec: dict[str, Any], broker: dict[str, Any]
) -> None:
    policy = resource("NetworkPolicy")["spec"]
    selector = resource("Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["podSelector"]["matchLabels"] == selector
    assert policy["policyTypes"] == ["Ingress"]
    broker_port = broker["ports"][0]["name"]
    rules = [r for r in policy["ingress"] if any(p["port"] == broker_port for p in r["ports"])]
    assert len(rules) == 1
    (peer,) = rules[0]["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # Every other rule is for the app's own port, never the broker's.
    app = next(c for c in pod_spec["containers"] if c["name"] != BROKER_CONTAINER)
    app_ports = {p["name"] for p in app["ports"]}
    for rule in policy["ingress"]:
        if rule is not rules[0]:
            assert {p["port"] for p in rule["ports"]} <= app_ports


# --- the sidecar -----------------------------------------------------------------------


def test_pod_runs_as_non_root_with_runtime_default_seccomp(pod_spec: dict[str, Any]) -> None:
    context = pod_spec["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == RUNTIME_UID
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec["automountServiceAccountToken"] is False


def test_every_container_is_locked_down(pod_spec: dict[str, Any]) -> None:
    assert {c["name"] for c in pod_spec["containers"]} == {"app", BROKER_CONTAINER}
    for container in pod_spec["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        assert "privileged" not in context
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), container["name"]


def test_broker_runs_as_the_image_user(broker: dict[str, Any]) -> None:
    assert broker["securityContext"]["runAsUser"] == RUNTIME_UID


def test_broker_probes(broker: dict[str, Any]) -> None:
    port = broker["ports"][0]
    assert port["containerPort"] == int(env_of(broker)["BROKER_PORT"])
    liveness, readiness = broker["livenessProbe"], broker["readinessProbe"]
    assert liveness["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert readiness["httpGet"] == {"path": "/readyz", "port": port["name"]}
    for probe in (liveness, readiness):
        assert 1 <= probe["timeoutSeconds"] <= 5


def test_broker_settings(broker: dict[str, Any]) -> None:
    env = env_of(broker)
    assert all(name.startswith("BROKER_") for name in env), "settings are BROKER_* only"
    assert env["BROKER_HOST"] == "0.0.0.0"  # the kubelet probes the pod IP
    assert broker["args"] == ["serve"]


def test_broker_has_a_writable_tmp_only(broker: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    tmp = next(m for m in broker["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volume_named(pod_spec, tmp["name"])
    for mount in broker["volumeMounts"]:
        if mount["mountPath"] != "/tmp":
            assert mount["readOnly"] is True, mount["name"]


def test_config_and_secrets_are_whole_directory_mounts(broker: dict[str, Any]) -> None:
    # A subPath mount never sees updates, which would break reload and rotation.
    assert all("subPath" not in mount for mount in broker["volumeMounts"])


def test_broker_config_is_the_configmap_file(
    broker: dict[str, Any], pod_spec: dict[str, Any]
) -> None:
    configmap = resource("ConfigMap")
    volume = volume_of(pod_spec, "configMap", configmap["metadata"]["name"])
    directory = mount_path(broker, volume["name"])
    config_path = Path(env_of(broker)["BROKER_CONFIG"])
    assert str(config_path.parent) == directory
    assert config_path.name in configmap["data"]


# --- the policy and its mounted secrets --------------------------------------------------


def policy_text() -> str:
    data = resource("ConfigMap")["data"]
    assert len(data) == 1
    return str(next(iter(data.values())))


def secret_files(broker: dict[str, Any], pod_spec: dict[str, Any]) -> tuple[str, dict[str, str]]:
    secret = resource("Secret")
    volume = volume_of(pod_spec, "secret", secret["metadata"]["name"])
    return mount_path(broker, volume["name"]), dict(secret["stringData"])


def test_policy_reads_every_secret_from_the_mounted_secret(
    broker: dict[str, Any], pod_spec: dict[str, Any]
) -> None:
    directory, values = secret_files(broker, pod_spec)
    referenced = FILE_REFERENCE.findall(policy_text())
    assert referenced
    for path in referenced:
        assert str(Path(path).parent) == directory, path
        assert Path(path).name in values, f"{path}: no such key in the Secret"
    assert {Path(path).name for path in referenced} == set(values), "unused Secret keys"
    # Only files: no ${VAR} environment reference, since the pod sets no such variable.
    assert not re.search(r"\$\{(?!file:)", policy_text())


def test_secret_holds_only_placeholders() -> None:
    for key, value in resource("Secret")["stringData"].items():
        assert value.startswith("replace-me"), key
    assert "data" not in resource("Secret")


def mount_secrets(tmp_path: Path, directory: str, values: dict[str, str]) -> str:
    """The policy with the Secret's mount moved under tmp_path, files written as mounted."""
    for key, value in values.items():
        (tmp_path / key).write_text(value + "\n")
    return policy_text().replace(f"{directory}/", f"{tmp_path}/")


def test_policy_is_valid_with_the_secret_mounted(
    tmp_path: Path, broker: dict[str, Any], pod_spec: dict[str, Any]
) -> None:
    directory, values = secret_files(broker, pod_spec)
    policy = load_policy_text(mount_secrets(tmp_path, directory, values), environ={})
    assert {s.get_secret_value() for s in policy.secrets()} == set(values.values())


def test_rotated_secret_file_is_what_the_next_load_reads(
    tmp_path: Path, broker: dict[str, Any], pod_spec: dict[str, Any]
) -> None:
    directory, values = secret_files(broker, pod_spec)
    text = mount_secrets(tmp_path, directory, values)
    (tmp_path / "databrain-api-key").write_text("rotated-databrain-api-key\n")
    policy = load_policy_text(text, environ={})
    databrain = policy.providers["databrain"]
    assert isinstance(databrain, DatabrainConfig)
    assert databrain.api_key.get_secret_value() == "rotated-databrain-api-key"
