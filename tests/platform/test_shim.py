"""`platform/` shadows the stdlib module from the repository root: the shim must keep both working."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_stdlib_api_is_reexported():
    import platform

    assert Path(platform.__file__).resolve() == REPO / "platform" / "__init__.py"
    assert platform.system() == "Linux"
    assert platform.python_version().startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert isinstance(platform.uname().machine, str)


def test_libraries_that_import_platform_work_from_repo_root():
    proc = _run("-c", "import uuid, torch, ray, mlflow, platform; print(uuid.uuid4().hex, platform.system())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("Linux")


def test_platform_modules_run_with_dash_m():
    for module in ("platform.train", "platform.evaluate", "platform.predict"):
        proc = _run("-m", module, "--help")
        assert proc.returncode == 0, f"{module}: {proc.stderr}"
        assert "usage" in proc.stdout.lower()
