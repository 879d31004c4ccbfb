"""deploy/: the Kubernetes manifests render with kustomize, every object passes the strict
Kubernetes schemas (KServe's InferenceService its own), and what they say agrees with the
server: settings that exist, probes on its health routes, a drain that fits the grace
period, writable volumes for whatever it writes, an autoscaling metric it exports. A broken
copy of the manifests (misspelled field, wrong type, missing field) fails the schema checks.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from server.api.operations import live, ready
from server.runtime.metrics import EngineMetrics
from server.settings import PREFIX, Settings
from tests.support.manifests import latest_version, render, schema_errors

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TARGETS = {"cpu": "overlays/cpu", "gpu": "overlays/gpu", "kserve": "kserve"}
# The oldest Kubernetes the manifests are for (autoscaling/v2, policy/v1 budgets with
# unhealthyPodEvictionPolicy, appProtocol kubernetes.io/h2c) and the newest the schemas know.
VERSIONS = ("1.30", latest_version())
SERVER_CONTAINER = {"cpu": "chexray", "gpu": "chexray", "kserve": "kserve-container"}


@functools.cache
def rendered(target: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(DEPLOY / TARGETS[target]))


def one(target: str, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in rendered(target)
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{target}: {len(found)} {kind} objects named {name}"
    return found[0]


def pod(target: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The server's pod spec and its pod labels."""
    if target == "kserve":
        predictor = one(target, "InferenceService")["spec"]["predictor"]
        return predictor, predictor.get("labels", {})
    template = one(target, "Deployment")["spec"]["template"]
    return template["spec"], template["metadata"]["labels"]


def server(target: str) -> dict[str, Any]:
    spec, _ = pod(target)
    (container,) = (c for c in spec["containers"] if c["name"] == SERVER_CONTAINER[target])
    return container


def environment(target: str) -> dict[str, str]:
    """The server container's variables: its ConfigMaps' data, then its own `env`; a value
    from a Secret or a resource field reads as `<from NAME>`."""
    container = server(target)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(target, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", f"<from {var['name']}>")
    return env


def settings(target: str) -> Settings:
    """The server's settings in `target`, with stand-ins of the right shape for the values
    that come from a Secret or a resource field."""
    env = {k: v for k, v in environment(target).items() if k.startswith(PREFIX)}
    env["CHEXRAY_DATABASE_URL"] = "postgresql+psycopg://u:p@chexray-postgres/chexray"
    env["CHEXRAY_INTRA_OP_THREADS"] = "2"
    if "CHEXRAY_DECODE_THREADS" in env:
        env["CHEXRAY_DECODE_THREADS"] = "4"
    return Settings.from_env(env)


def is_under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


# --- rendering and the schemas ----------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_passes_the_kubernetes_schemas(target: str, version: str) -> None:
    objects = rendered(target)
    kinds = {o["kind"] for o in objects}
    assert {"ServiceAccount", "PersistentVolumeClaim", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget", "Service"} <= kinds
    assert ("InferenceService" if target == "kserve" else "Deployment") in kinds
    errors = [e for o in objects for e in schema_errors(o, version)]
    assert errors == []


BREAKAGES = {
    "misspelled field": (
        "base/deployment.yaml",
        "          readinessProbe:",
        "          readinesProbe:",
        "cpu",
        "'readinesProbe' was unexpected",
    ),
    "wrong type": (
        "base/deployment.yaml",
        "containerPort: 8000",
        'containerPort: "8000"',
        "gpu",
        "'8000' is not of type 'integer'",
    ),
    "missing required field": (
        "base/hpa.yaml",
        "    kind: Deployment\n    name: chexray\n",
        "    kind: Deployment\n",
        "cpu",
        "scaleTargetRef: 'name' is a required property",
    ),
    "unknown apiVersion": (
        "base/pdb.yaml",
        "apiVersion: policy/v1\n",
        "apiVersion: policy/v2\n",
        "cpu",
        "Couldn't find schema for kind PodDisruptionBudget",
    ),
    "misspelled KServe field": (
        "kserve/inferenceservice.yaml",
        "    minReplicas: 2",
        "    minReplica: 2",
        "kserve",
        "'minReplica' was unexpected",
    ),
    "wrong type in the KServe pod": (
        "kserve/inferenceservice.yaml",
        "failureThreshold: 60",
        "failureThreshold: sixty",
        "kserve",
        "'sixty' is not of type 'integer'",
    ),
    "missing required field in the KServe pod": (
        "kserve/inferenceservice.yaml",
        "      - name: kserve-container\n        image: chexray\n",
        "      - image: chexray\n",
        "kserve",
        "containers.0: 'name' is a required property",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_copy_fails_the_schemas(tmp_path: Path, breakage: str) -> None:
    file, old, new, target, expected = BREAKAGES[breakage]
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    text = (copy / file).read_text()
    assert text.count(old) == 1, f"{old!r} is no longer in {file}: update this test"
    (copy / file).write_text(text.replace(old, new))
    objects = render(copy / TARGETS[target])
    errors = [e for o in objects for e in schema_errors(o, VERSIONS[0])]
    assert any(expected in e for e in errors), errors


# --- what the manifests say about the server ----------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_settings_exist_and_parse(target: str) -> None:
    names = [k for k in environment(target) if k.startswith(PREFIX)]
    unknown = {k for k in names if k[len(PREFIX) :].lower() not in Settings.__struct_fields__}
    assert unknown == set()
    parsed = settings(target)
    assert parsed.database_url.startswith("postgresql")
    assert str(parsed.model_dir) == "/models" and str(parsed.data_dir) == "/data"


@pytest.mark.parametrize("target", TARGETS)
def test_database_is_the_external_postgresql_from_a_secret(target: str) -> None:
    (url,) = (v for v in server(target)["env"] if v["name"] == "CHEXRAY_DATABASE_URL")
    assert url["valueFrom"]["secretKeyRef"] == {"name": "chexray-database", "key": "url"}
    assert not [o for o in rendered(target) if o["kind"] == "Secret"]
    postgres = one(target, "Service", "chexray-postgres")["spec"]
    assert postgres["type"] == "ExternalName" and "selector" not in postgres


@pytest.mark.parametrize("target", TARGETS)
def test_probes_use_the_health_routes(target: str) -> None:
    container = server(target)
    port = int(environment(target)["CHEXRAY_PORT"])
    names = {p["name"]: p["containerPort"] for p in container["ports"]}
    (ready_path,), (live_path,) = ready.paths, live.paths
    expected = {
        "startupProbe": ready_path,
        "readinessProbe": ready_path,
        "livenessProbe": live_path,
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert names.get(get["port"], get["port"]) == port, probe
    # Loading and warming up may take minutes: the startup probe waits for that long.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize("target", TARGETS)
def test_grace_period_covers_the_pause_and_the_drain(target: str) -> None:
    spec, _ = pod(target)
    command = server(target)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    drain = settings(target).drain_timeout_s
    assert spec["terminationGracePeriodSeconds"] > float(command[1]) + drain


@pytest.mark.parametrize("target", TARGETS)
def test_non_root_on_a_read_only_root_with_volumes_for_what_it_writes(target: str) -> None:
    spec, _ = pod(target)
    uid = re.search(r"--uid (\d+)", (ROOT / "Containerfile").read_text())
    assert uid, "the Containerfile no longer creates its user with --uid"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == int(uid.group(1))
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in spec["containers"] + spec.get("initContainers", []):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["capabilities"]["drop"] == ["ALL"], container["name"]
        assert {m["name"] for m in container["volumeMounts"]} <= set(volumes)

    config = settings(target)
    mounts = server(target)["volumeMounts"]
    writable = [m["mountPath"] for m in mounts if not m.get("readOnly")]
    # Database (SQLite, unused with PostgreSQL) and caches, media, temporary files.
    for path in (config.data_dir, config.ort_cache_dir, config.media_dir, Path("/tmp")):
        assert any(is_under(str(path), m) for m in writable), path
    # Each replica keeps its caches; the media are shared by all.
    media = max(
        (m for m in mounts if is_under(str(config.media_dir), m["mountPath"])),
        key=lambda m: len(m["mountPath"]),
    )
    claim = volumes[media["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = one(target, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # The server only reads the model repository; the init container fills it.
    (models,) = (m for m in mounts if m["mountPath"] == str(config.model_dir))
    assert models.get("readOnly") is True
    (init,) = spec["initContainers"]
    (filled,) = (m for m in init["volumeMounts"] if m["name"] == models["name"])
    assert filled["mountPath"] == str(config.model_dir) and not filled.get("readOnly")
    assert "/opt/models-default/" in " ".join(init["command"])
    assert "/opt/models-default" in (ROOT / "Containerfile").read_text()
    assert init["image"] == server(target)["image"]


def test_gpu_and_cpu_variants() -> None:
    gpu, cpu = server("gpu"), server("cpu")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert environment("gpu")["CHEXRAY_PROVIDER"] == "cuda"
    spec, _ = pod("gpu")
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert not any("gpu" in k for k in cpu["resources"].get("limits", {}))
    assert environment("cpu")["CHEXRAY_PROVIDER"] == "cpu"
    assert set(cpu["resources"]["requests"]) == {"cpu", "memory"}
    assert cpu["image"].split(":")[0].endswith("chexray-cpu")
    assert gpu["image"].split(":")[0].endswith("/chexray")
    kserve = server("kserve")
    assert kserve["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert environment("kserve")["CHEXRAY_PROVIDER"] == "cuda"
    # Beside a GPU the decoding threads are the cores the pod asked for, not half the node's.
    for container in (gpu, kserve):
        (threads,) = (v for v in container["env"] if v["name"] == "CHEXRAY_DECODE_THREADS")
        field = threads["valueFrom"]["resourceFieldRef"]
        assert (field["resource"], field["containerName"]) == ("requests.cpu", container["name"])
    assert "CHEXRAY_DECODE_THREADS" not in environment("cpu")


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_service_budget_and_autoscaler_find_the_server(target: str) -> None:
    deployment = one(target, "Deployment")
    _, labels = pod(target)
    selected = deployment["spec"]["selector"]["matchLabels"]
    assert selected.items() <= labels.items()
    service = one(target, "Service", "chexray")["spec"]
    assert service["selector"].items() <= labels.items()
    ports = {p["name"] for p in server(target)["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= ports
    pdb = one(target, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= labels.items()
    ref = one(target, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_kserve_predictor_speaks_the_open_inference_protocol() -> None:
    isvc = one("kserve", "InferenceService")
    container = server("kserve")
    env = environment("kserve")
    assert env["PROTOCOL"] == "v2"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # KServe's port names: the first (HTTP) becomes the Service's port 80.
    assert list(ports) == ["http1", "h2c"]
    assert ports["http1"] == int(env["CHEXRAY_PORT"])
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"
    # KServe names the predictor's Deployment <name>-predictor: the HPA scales that one.
    ref = one("kserve", "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert ref["name"] == f"{isvc['metadata']['name']}-predictor"
    _, labels = pod("kserve")
    pdb = one("kserve", "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= labels.items()


@pytest.mark.parametrize("target", TARGETS)
def test_autoscaler_metric_is_one_the_server_exports(target: str) -> None:
    hpa = one(target, "HorizontalPodAutoscaler")["spec"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    labels = metric["pods"]["metric"]["selector"]["matchLabels"]
    exported = {m.name: m for m in EngineMetrics(labels.get("model", "")).registry.collect()}
    assert name in exported, sorted(exported)
    samples = [s for s in exported[name].samples if s.name == name]
    assert samples and all(labels.items() <= s.labels.items() for s in samples)
    assert hpa["minReplicas"] >= 2


@pytest.mark.parametrize("target", ["gpu", "kserve"])
def test_init_container_fills_an_empty_model_volume_only(target: str, tmp_path: Path) -> None:
    spec, _ = pod(target)
    (init,) = spec["initContainers"]
    bundled, volume = tmp_path / "models-default", tmp_path / "models"
    (bundled / "parts").mkdir(parents=True)
    (bundled / "manifest.json").write_text("bundled")
    (bundled / "parts" / "a.onnx").write_bytes(b"onnx")
    volume.mkdir()
    script = init["command"][-1].replace("/opt/models-default", "@BUNDLED@")
    script = script.replace("/models", str(volume)).replace("@BUNDLED@", str(bundled))
    command = [*init["command"][:-1], script]

    first = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "copied" in first.stdout
    assert (volume / "manifest.json").read_text() == "bundled"
    assert (volume / "parts" / "a.onnx").read_bytes() == b"onnx"
    # A volume that holds a repository (yours, or the one copied before) is left alone.
    (volume / "manifest.json").write_text("yours")
    second = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "present" in second.stdout
    assert (volume / "manifest.json").read_text() == "yours"
