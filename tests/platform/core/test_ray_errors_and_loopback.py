"""A local Ray cluster started the way ``platform.train`` starts it: its processes listen on 127.0.0.1
only, and the named errors raised in a Ray worker reach the driver whole (type, message, attributes).

Runs in a fresh interpreter: Ray reads its single-machine switch when it is first imported.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow

SCRIPT = r'''
import json, os, psutil
from platform.core.loopback import keep_local_ray_on_loopback
keep_local_ray_on_loopback()   # before anything imports ray, as python -m platform.train does
import ray
from platform.core.ray_cluster import init_ray
from codetr.config import load_config
from codetr.data import BadImageError, MissingImagesError
from codetr.errors import CheckpointError, NonFiniteLossError

print(init_ray(load_config(None, ["platform.num_workers=1"])), flush=True)

@ray.remote
def fail(kind):
    if kind == "image":
        raise BadImageError("/data/x.jpg", "file is empty (image id 7)")
    if kind == "missing":
        raise MissingImagesError(["/data/a.jpg", "/data/b.jpg"], "/data/ann.json")
    if kind == "checkpoint":
        raise CheckpointError("/runs/r/checkpoint_1/checkpoint.pt", "unreadable: truncated or corrupt")
    raise NonFiniteLossError(3, {"query/loss_bbox": float("nan")}, [1, 2], ["a.jpg", "b.jpg"])

out = {"errors": {}}
for kind in ("image", "missing", "checkpoint", "nonfinite"):
    try:
        ray.get(fail.remote(kind))
    except Exception as e:
        cause = getattr(e, "cause", None) or e      # ray.exceptions.RayTaskError: the worker's own exception
        out["errors"][kind] = {"types": [c.__name__ for c in type(cause).__mro__],
                               "message": str(cause).splitlines()[-1], "attrs": {k: v for k, v in vars(cause).items()
                                                                               if isinstance(v, (str, int, list))}}
me = psutil.Process()
listening = set()
pids = {p.pid for p in me.children(recursive=True)} | {me.pid}
for c in psutil.net_connections(kind="inet"):
    if c.status == psutil.CONN_LISTEN and c.pid in pids:
        listening.add(c.laddr.ip)
out["listening"] = sorted(listening)
ray.shutdown()
print("RESULT " + json.dumps(out), flush=True)
'''


@pytest.fixture(scope="module")
def result():
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RAY_ADDRESS",)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(line[0][len("RESULT "):])


def test_local_ray_listens_on_loopback_only(result):
    stdout, out = result
    assert "listening on 127.0.0.1 only" in stdout
    assert out["listening"] and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in out["listening"]), \
        out["listening"]


@pytest.mark.parametrize("kind, name, attrs", [
    ("image", "BadImageError", {"path": "/data/x.jpg", "reason": "file is empty (image id 7)"}),
    ("missing", "MissingImagesError", {"paths": ["/data/a.jpg", "/data/b.jpg"]}),
    ("checkpoint", "CheckpointError", {"path": "/runs/r/checkpoint_1/checkpoint.pt"}),
    ("nonfinite", "NonFiniteLossError", {"iteration": 3, "image_ids": [1, 2], "file_names": ["a.jpg", "b.jpg"]}),
])
def test_named_errors_cross_ray_whole(result, kind, name, attrs):
    _, out = result
    error = out["errors"][kind]
    assert name in error["types"] and "CodetrError" in error["types"]
    assert "missing 1 required positional argument" not in error["message"]
    for key, value in attrs.items():
        assert error["attrs"][key] == value
