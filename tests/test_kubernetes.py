"""The Kubernetes examples in deploy/kubernetes/ agree with what the app and the image expect:
ports, variable names and values, probe paths, the volume at DATA_DIR, secrets, the uid."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: in the test venv by way of moto[server] (requirements-dev.txt)

from app.core.config import SETTINGS
from tests.conftest import ROOT

MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
ROWS = {row.env: row for row in SETTINGS.values()}
PORT = int(ROWS["PORT"].default)
IMAGE_DATA_DIR = ROWS["DATA_DIR"].docker
STATUS_PATH = "/+status"  # app/http/health.py, the image's HEALTHCHECK
WORKLOADS = {"Deployment", "StatefulSet"}


def documents(path: Path) -> list[dict[str, Any]]:
    """Every object in a manifest file."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def of_kind(path: Path, *kinds: str) -> list[dict[str, Any]]:
    """The objects of these kinds in a manifest file."""
    return [doc for doc in documents(path) if doc["kind"] in kinds]


def pod_of(path: Path) -> dict[str, Any]:
    """The one workload's pod spec (with its labels under "labels")."""
    (workload,) = of_kind(path, *WORKLOADS)
    template = workload["spec"]["template"]
    return {**template["spec"], "labels": template["metadata"]["labels"]}


def container_of(path: Path) -> dict[str, Any]:
    """The pyshelf container of the workload."""
    (container,) = pod_of(path)["containers"]
    return container


def image_uid() -> int:
    """The uid the Dockerfile runs pyshelf as."""
    match = re.search(r"^ARG PYSHELF_UID=(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def test_both_examples_exist() -> None:
    """The appliance (SQLite on a volume) and the scale-out variant (PostgreSQL + S3)."""
    assert [path.name for path in MANIFESTS] == ["appliance.yaml", "scale.yaml"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_every_variable_is_a_setting_with_a_valid_value(path: Path) -> None:
    """No misspelt name pyshelf would ignore; literal values read as the settings table says."""
    for variable in container_of(path)["env"]:
        row = ROWS.get(variable["name"])
        assert row is not None, f"{variable['name']} is not a row of app/core/config.py"
        if "value" in variable:
            row.parse(str(variable["value"]))  # raises ValueError with the reason


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_every_secret_reference_names_a_key_of_a_secret_in_the_file(path: Path) -> None:
    """secretKeyRef points at a Secret of this file and one of its keys."""
    secrets = {
        doc["metadata"]["name"]: doc.get("stringData", {}) for doc in of_kind(path, "Secret")
    }
    references = [
        v["valueFrom"]["secretKeyRef"] for v in container_of(path)["env"] if "valueFrom" in v
    ]

    assert {"ADMIN_PASSWORD"} <= {ref["key"] for ref in references}
    for ref in references:
        assert ref["key"] in secrets.get(ref["name"], {}), ref
    for values in secrets.values():
        assert set(values.values()) == {""}  # no password is shipped in the example


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_the_container_listens_on_port_and_every_probe_asks_status(path: Path) -> None:
    """containerPort is PORT's default (the image does not set another), and the startup,
    readiness and liveness probes GET /+status on it."""
    container = container_of(path)
    assert "PORT" not in {v["name"] for v in container["env"]}
    (port,) = container["ports"]
    assert port["containerPort"] == PORT

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == STATUS_PATH, probe
        assert check["port"] in (port["name"], PORT), probe


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_the_service_reaches_the_pods_port(path: Path) -> None:
    """The Service selects the pod's labels and targets its port."""
    pod = pod_of(path)
    (service,) = of_kind(path, "Service")
    port = container_of(path)["ports"][0]

    assert service["spec"]["selector"].items() <= pod["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], PORT)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_data_dir_is_a_volume_writable_by_the_image_user(path: Path) -> None:
    """The image's DATA_DIR is mounted, and the pod runs as the image's uid with it as fsGroup."""
    pod = pod_of(path)
    container = container_of(path)
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}

    assert "DATA_DIR" not in {v["name"] for v in container["env"]}
    assert IMAGE_DATA_DIR in mounts
    assert mounts[IMAGE_DATA_DIR] in {volume["name"] for volume in pod["volumes"]}
    assert pod["securityContext"]["runAsUser"] == image_uid()
    assert pod["securityContext"]["fsGroup"] == image_uid()
    graceful = int(ROWS["GRACEFUL_TIMEOUT"].default)
    assert pod["terminationGracePeriodSeconds"] > graceful


def test_the_appliance_is_one_pod_on_a_persistent_volume() -> None:
    """SQLite: one replica, replaced (not rolled) on upgrade, its data on the claim."""
    path = ROOT / "deploy" / "kubernetes" / "appliance.yaml"
    (workload,) = of_kind(path, *WORKLOADS)
    (claim,) = of_kind(path, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod_of(path)["volumes"]}
    data = next(m["name"] for m in container_of(path)["volumeMounts"] if m["mountPath"] == "/data")

    assert workload["spec"]["replicas"] == 1
    assert workload["spec"]["strategy"]["type"] == "Recreate"
    assert volumes[data]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "DATABASE_URL" not in {v["name"] for v in container_of(path)["env"]}


def test_the_scale_out_variant_shares_database_bucket_and_key() -> None:
    """Several replicas need PostgreSQL, S3 and one SECRET_KEY; DATA_DIR is scratch."""
    path = ROOT / "deploy" / "kubernetes" / "scale.yaml"
    (workload,) = of_kind(path, *WORKLOADS)
    env = {v["name"]: v for v in container_of(path)["env"]}
    volumes = {v["name"]: v for v in pod_of(path)["volumes"]}
    data = next(m["name"] for m in container_of(path)["volumeMounts"] if m["mountPath"] == "/data")

    assert workload["spec"]["replicas"] >= 2
    assert {"DATABASE_URL", "SECRET_KEY", "STORAGE_URL"} <= env.keys()
    assert "secretKeyRef" in env["DATABASE_URL"]["valueFrom"]
    assert "secretKeyRef" in env["SECRET_KEY"]["valueFrom"]
    assert env["STORAGE_URL"]["value"].startswith("s3://")
    assert "emptyDir" in volumes[data]
