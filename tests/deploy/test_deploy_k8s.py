"""deploy/k8s: every object validated offline against its JSON schema, and the objects wired to each other.

Built-in kinds use the Kubernetes OpenAPI schemas shipped in the ``kubernetes-validate`` package, in strict
mode (unknown fields are errors). KEDA's CRDs have no schema there: ScaledObject and TriggerAuthentication
are validated against the schemas in tests/deploy/schemas/, written from KEDA's CRD and docs, whose
Kubernetes types ($ref) resolve to the same Kubernetes definitions.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_helpers import K8S, find, image_env, runtime_stage
from referencing import Registry, Resource

from donut_hole.queue import time_limits
from donut_hole.settings import Settings

KUBERNETES_VERSION = "1.30.0"  # oldest minor still in wide use; the schemas ship in kubernetes-validate
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KEDA_SCHEMAS = {
    "ScaledObject": "keda-scaledobject-v1alpha1.json",
    "TriggerAuthentication": "keda-triggerauthentication-v1alpha1.json",
}
# deploy/measure_worker.sh with a tiny-preset checkpoint (the size of the shipped student), concurrency 1,
# batches of 4: the worker's processes together (sum of Pss). The CPU worker's limit leaves 1.5x at least.
MEASURED_WORKER_MIB = 553

Manifests = list[tuple[str, dict[str, Any]]]


def keda_validator(kind: str) -> jsonschema.protocols.Validator:
    definitions = importlib.resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict/_definitions.json"
    )
    registry = Resource.from_contents(json.loads(definitions.read_text())) @ Registry()
    schema = json.loads((SCHEMAS / KEDA_SCHEMAS[kind]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def by_kind(manifests: Manifests, kind: str) -> list[dict[str, Any]]:
    return [d for _, d in manifests if d["kind"] == kind]


def workloads(manifests: Manifests) -> list[dict[str, Any]]:
    """Every object with a pod template: Deployments, Jobs, and the Job each CronJob makes."""
    jobs = [
        {"metadata": cron["metadata"], "spec": cron["spec"]["jobTemplate"]["spec"]}
        for cron in by_kind(manifests, "CronJob")
    ]
    return by_kind(manifests, "Deployment") + by_kind(manifests, "Job") + jobs


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment).get("env", []) if "value" in e}


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity in MiB: "1Gi" -> 1024.0, "512Mi" -> 512.0."""
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


def test_builtin_kinds_validate_against_the_kubernetes_schemas(manifests: Manifests) -> None:
    checked = 0
    for filename, doc in manifests:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{filename}: {doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
        checked += 1
    assert checked >= 9


def test_the_kubernetes_validator_rejects_a_broken_manifest(manifests: Manifests) -> None:
    deployment = copy.deepcopy(find(manifests, "Deployment", "donut-hole-api"))
    deployment["spec"]["replica"] = 2  # typo: unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = copy.deepcopy(find(manifests, "Deployment", "donut-hole-api"))
    container(deployment)["ports"][0]["containerPort"] = "8000"  # wrong type
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_keda_objects_validate_against_their_schemas(manifests: Manifests) -> None:
    keda = [(f, d) for f, d in manifests if d["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for _, d in keda} == set(KEDA_SCHEMAS)
    for filename, doc in keda:
        errors = sorted(keda_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{filename}: " + "; ".join(
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors
        )


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda so: so["spec"]["triggers"][0]["metadata"].update(listLength=8), "KEDA wants strings"),
        (lambda so: so["spec"].update(cooldownPeriods=300), "typo"),
        (lambda so: so["spec"]["triggers"][0]["metadata"].pop("listName"), "required by the redis scaler"),
        (lambda so: so["spec"]["scaleTargetRef"].pop("name"), "required by the CRD"),
        (lambda so: so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"].update(x=1), "k8s"),
    ],
)
def test_the_keda_schema_rejects_broken_scaled_objects(manifests: Manifests, mutate: Any, why: str) -> None:
    scaled = copy.deepcopy(find(manifests, "ScaledObject", "donut-hole-worker-cpu"))
    mutate(scaled)
    assert list(keda_validator("ScaledObject").iter_errors(scaled)), why


def test_manifests_are_namespace_agnostic(manifests: Manifests) -> None:
    for filename, doc in manifests:
        assert "namespace" not in doc["metadata"], filename


def test_kustomization_lists_every_manifest_and_every_image(manifests: Manifests) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert "namespace" not in kustomization
    images = {i["name"] for i in kustomization["images"]}
    for doc in workloads(manifests):
        assert container(doc)["image"] in images, doc["metadata"]["name"]


def test_configmaps_and_secrets_referenced_by_pods_exist(manifests: Manifests) -> None:
    config_maps = {d["metadata"]["name"] for d in by_kind(manifests, "ConfigMap")}
    secrets = {d["metadata"]["name"] for d in by_kind(manifests, "Secret")}
    for doc in workloads(manifests):
        for source in container(doc).get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in config_maps
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets


def test_example_secrets_are_marked_change_me(manifests: Manifests) -> None:
    for secret in by_kind(manifests, "Secret"):
        assert "data" not in secret
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value, f"{secret['metadata']['name']}.{key}"


def test_api_service_and_probes(manifests: Manifests) -> None:
    api = find(manifests, "Deployment", "donut-hole-api")
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = find(manifests, "Service", "donut-hole-api")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in container(api)["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    assert container(api)["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container(api)["readinessProbe"]["httpGet"]["port"] in port_names
    # /healthz is 503 while the database is down: startup and liveness must not restart the API for that.
    for probe in ("startupProbe", "livenessProbe"):
        assert container(api)[probe]["tcpSocket"]["port"] in port_names
    pdb = find(manifests, "PodDisruptionBudget", "donut-hole-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "limits" in container(api)["resources"] and "requests" in container(api)["resources"]


def test_workers_are_sized_and_shut_down_gracefully(manifests: Manifests) -> None:
    config = find(manifests, "ConfigMap", "donut-hole-config")["data"]
    soft = int(config["DONUT_HOLE_TASK_TIME_LIMIT_S"])
    _, hard = time_limits(Settings(task_time_limit_s=soft))
    for name in ("donut-hole-worker-cpu", "donut-hole-worker-gpu"):
        worker = find(manifests, "Deployment", name)
        assert "replicas" not in worker["spec"], "KEDA owns the replica count"
        assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > hard
        resources = container(worker)["resources"]
        assert resources["requests"] == resources["limits"], "Guaranteed QoS"
        env = env_of(worker)
        assert env["DONUT_HOLE_WORKER_CONCURRENCY"] == "1"
        assert int(env["DONUT_HOLE_TORCH_THREADS"]) == int(resources["limits"]["cpu"])
        probe = container(worker)["readinessProbe"]["exec"]["command"]
        assert probe == ["python", "-m", "donut_hole.worker.ready"]
    cpu = container(find(manifests, "Deployment", "donut-hole-worker-cpu"))
    assert mebibytes(cpu["resources"]["limits"]["memory"]) >= 1.5 * MEASURED_WORKER_MIB


def test_gpu_worker_takes_the_gpu_queue_on_a_gpu_node(manifests: Manifests) -> None:
    gpu = find(manifests, "Deployment", "donut-hole-worker-gpu")
    pod = gpu["spec"]["template"]["spec"]
    assert pod["nodeSelector"]
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = env_of(gpu)
    assert env["DONUT_HOLE_QUEUE"] == "gpu"
    assert env["DONUT_HOLE_DEVICE"] == "cuda"
    cpu = find(manifests, "Deployment", "donut-hole-worker-cpu")
    assert container(gpu)["image"] != container(cpu)["image"], "the gpu queue needs the CUDA build"
    cpu_env = env_of(cpu)
    assert cpu_env["DONUT_HOLE_QUEUE"] == "cpu"
    assert cpu_env["DONUT_HOLE_DEVICE"] == "cpu"


def test_each_scaled_object_watches_the_queue_of_its_deployment(manifests: Manifests) -> None:
    auths = {d["metadata"]["name"]: d for d in by_kind(manifests, "TriggerAuthentication")}
    secrets = {d["metadata"]["name"]: d["stringData"] for d in by_kind(manifests, "Secret")}
    broker_db = secrets["donut-hole-secrets"]["DONUT_HOLE_BROKER_URL"].rsplit("/", 1)[1]
    scaled = by_kind(manifests, "ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == {
        "donut-hole-worker-cpu",
        "donut-hole-worker-gpu",
    }
    for so in scaled:
        spec = so["spec"]
        target = find(manifests, "Deployment", spec["scaleTargetRef"]["name"])
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["pollingInterval"] > 0 and spec["cooldownPeriod"] > 0
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == env_of(target)["DONUT_HOLE_QUEUE"]
        assert trigger["metadata"]["databaseIndex"] == broker_db
        auth = auths[trigger["authenticationRef"]["name"]]
        parameters = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
        assert {"address", "password"} <= parameters
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]]


def test_pods_run_as_the_image_user_without_privileges(manifests: Manifests) -> None:
    (user,) = [args for ins, args in runtime_stage() if ins == "USER"]
    uid = int(user.split(":")[0])
    for doc in workloads(manifests):
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        security = container(doc)["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in container(doc)["volumeMounts"]}
        assert "/tmp" in mounts  # HF_HOME and MPLCONFIGDIR of the image live there
        assert image_env()["HF_HOME"].startswith("/tmp/")


def test_the_retention_job_is_shipped_suspended_and_never_overlaps(manifests: Manifests) -> None:
    (cron,) = by_kind(manifests, "CronJob")
    assert cron["spec"]["suspend"] is True  # deleting is final: an operator turns it on
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = workloads(manifests)[-1]
    assert container(job)["args"][:2] == ["purge", "--older-than"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_migration_job_runs_migrate_once(manifests: Manifests) -> None:
    job = find(manifests, "Job", "donut-hole-migrate")
    assert container(job)["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
