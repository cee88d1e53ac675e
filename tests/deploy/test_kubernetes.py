"""deploy/kubernetes: schema-valid manifests (kubernetes-validate, strict, offline), the
sidecar's probes and security context, and a policy whose secrets are mounted files."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from app.config.loader import load_policy_text
from app.providers.databrain import DatabrainConfig
from tests.deploy.support import KUBERNETES_DIR, load_yaml, load_yaml_documents

KUSTOMIZATION = KUBERNETES_DIR / "kustomization.yaml"
# The oldest Kubernetes the example supports, and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
BROKER_CONTAINER = "token-broker"
RUNTIME_UID = 10001
FILE_REFERENCE = re.compile(r"\$\{file:([^}]*)\}")


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES_DIR.glob("*.yaml") if p != KUSTOMIZATION)


def resources() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in load_yaml_documents(path)]


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


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_in_strict_mode(path: Path, version: str) -> None:
    documents = load_yaml_documents(path)
    assert documents
    for document in documents:
        # A kind without a schema raises SchemaNotFoundError here (the CLI only warns).
        kubernetes_validate.validate(document, version, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    deployment = copy.deepcopy(resource("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(KUSTOMIZATION)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files())
    images = {image["name"] for image in kustomization.get("images", [])}
    deployment_images = {
        c["image"].rsplit(":", 1)[0]
        for c in resource("Deployment")["spec"]["template"]["spec"]["containers"]
    }
    assert images <= deployment_images


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
