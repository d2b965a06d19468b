"""The multi-node launch files (deploy/cluster/): they parse, the launcher config passes Ray's own schema,
the manifests agree with each other, and every command they run resolves: the module exists and its
config (or sweep file) validates with the command's own overrides."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from codetr import load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "cluster"
GPUS_PER_NODE = 8


def load_all(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((CLUSTER / name).read_text()) if doc]


LAUNCHER = load_all("ray-cluster.yaml")[0]
RAYJOBS = {name: load_all(name)[0] for name in ("rayjob-sweep.yaml", "rayjob-codino-r50.yaml")}
SHARED = {(d["kind"], d["metadata"]["name"]): d for d in load_all("shared.yaml")}


def commands() -> list[tuple[str, str, int]]:
    """(where, command, GPU nodes) of every command the files run."""
    nodes = LAUNCHER["available_node_types"]["gpu_worker"]["min_workers"]
    out = [(f"ray-cluster.yaml metadata.jobs.{k}", v, nodes) for k, v in LAUNCHER["metadata"]["jobs"].items()]
    for name, job in RAYJOBS.items():
        out.append((f"{name} spec.entrypoint", job["spec"]["entrypoint"],
                    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]))
    return out


def test_launcher_config_passes_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(LAUNCHER, schema)
    gpu = LAUNCHER["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] == GPUS_PER_NODE and gpu["min_workers"] == gpu["max_workers"] == LAUNCHER["max_workers"]
    assert LAUNCHER["head_node_type"] in LAUNCHER["available_node_types"]
    start = " ".join(LAUNCHER["head_start_ray_commands"])
    assert "mlflow server" in start and "export MLFLOW_TRACKING_URI=http://" in start and "ray start --head" in start
    assert any("/shared" in c for c in LAUNCHER["setup_commands"])          # the data paths of the jobs
    assert set(LAUNCHER["metadata"]["jobs"]) == {"sweep", "codino_r50"}


def test_rayjobs_share_one_image_volume_and_mlflow_server():
    workdir = re.search(r"^WORKDIR (\S+)$", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    service = SHARED[("Service", "mlflow")]
    uri = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}"
    images = set()
    for name, job in RAYJOBS.items():
        assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob"), name
        assert job["metadata"]["namespace"] == SHARED[("Namespace", "codetr")]["metadata"]["name"]
        env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
        assert env["working_dir"] == workdir and env["env_vars"]["MLFLOW_TRACKING_URI"] == uri, name
        spec = job["spec"]["rayClusterSpec"]
        assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 50)
        group = spec["workerGroupSpecs"][0]
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"]
        pods = [spec["headGroupSpec"]["template"]["spec"], group["template"]["spec"]]
        worker = pods[1]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == str(GPUS_PER_NODE)
        for pod in pods:
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                      if "persistentVolumeClaim" in v}
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            assert claims[mounts["/shared"]] == "codetr-shared", name
            assert ("PersistentVolumeClaim", "codetr-shared") in SHARED
            images.add(pod["containers"][0]["image"])
            assert pod["containers"][0]["workingDir"] == workdir
    assert len(images) == 1 and images == {SHARED[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]["image"]}


@pytest.mark.parametrize("where,command,nodes", commands(), ids=[c[0] for c in commands()])
def test_command_resolves(where, command, nodes):
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("platform."), where
    module = argv[2]
    assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
    overrides = [a for a in argv[3:] if "=" in a and not a.startswith("-")]
    values = dict(a.split("=", 1) for a in overrides)
    for key, value in values.items():
        if key.startswith("data.") and key.endswith(("ann_file", "img_dir")):
            assert value.startswith("/shared/coco/"), f"{where}: {key} must be on the shared volume"
    storage = values.get("storage_path") or values.get("platform.storage_path")
    assert storage and (storage.startswith("s3://") or storage.startswith("/shared/")), where
    if module == "platform.sweep":
        sweep_file = argv[3]
        assert (ROOT / sweep_file).is_file(), f"{where}: {sweep_file} does not exist"
        resources = yaml.safe_load((ROOT / sweep_file).read_text())["resources"]
        concurrent = int(values["max_concurrent_trials"])
        assert concurrent * resources["num_workers"] * resources["gpus_per_worker"] <= nodes * GPUS_PER_NODE
        # the sweep's own validation, with the command's overrides (no Ray, no MLflow)
        r = subprocess.run([sys.executable, "-m", "platform.sweep", "--dry-run", *argv[3:]], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"storage {storage}" in r.stdout and f"max {concurrent} concurrent" in r.stdout
    else:
        assert module == "platform.train", where
        config = argv[argv.index("--config") + 1]
        assert (ROOT / config).is_file(), f"{where}: {config} does not exist"
        cfg = load_config(ROOT / config, overrides)
        assert cfg.platform.use_gpu and cfg.platform.num_workers == nodes * GPUS_PER_NODE
        assert cfg.platform.num_workers * cfg.data.batch_size == 16    # the official recipe's batch
        assert cfg.data.dataset == "coco"
