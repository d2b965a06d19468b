"""Where a run came from: MLflow's standard source tags and the platform's own.

    source_tags("platform.train", argv, config_file="experiments/codetr_tiny.yaml")

gives, for single runs, sweep parents and sweep children alike:

    mlflow.source.name        python -m platform.train       (the entry point)
    mlflow.source.type        LOCAL, or JOB under ``ray job submit``
    mlflow.source.git.commit  HEAD of the repository (absent where there is no git checkout,
                              e.g. the copy of the working dir a Ray job runs in)
    mlflow.source.git.branch  the branch, when on one
    mlflow.source.git.repoURL the ``origin`` remote, when there is one
    mlflow.user               the user running the command
    platform.git.dirty        true when tracked files differ from the commit (the run's code is not
                              exactly the commit), false otherwise
    platform.command          the command line, re-runnable (``python -m platform.train ...``)
    platform.config_file      the config (or sweep) file the command named

``mlflow.runName`` is added by the callers, who know the run's name.
"""
from __future__ import annotations

import getpass
import os
import shlex
import subprocess
from pathlib import Path

from platform.core.config_files import REPO_ROOT

DIRTY_TAG = "platform.git.dirty"
COMMAND_TAG = "platform.command"
CONFIG_FILE_TAG = "platform.config_file"


def _git(*args: str, cwd: Path = REPO_ROOT) -> str | None:
    """Output of ``git args`` in ``cwd`` (stripped), or None when git or the checkout is missing."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(cwd: Path = REPO_ROOT) -> dict[str, str]:
    """``{"commit", "branch", "repo_url", "dirty"}`` of the checkout at ``cwd`` (only the keys known)."""
    if _git("rev-parse", "--is-inside-work-tree", cwd=cwd) != "true":
        return {}
    state = {}
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if commit:
        state["commit"] = commit
    branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=cwd)
    if branch and branch != "HEAD":
        state["branch"] = branch
    url = _git("config", "--get", "remote.origin.url", cwd=cwd)
    if url:
        state["repo_url"] = url
    changes = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    if changes is not None:
        state["dirty"] = "true" if changes else "false"
    return state


def in_ray_job() -> bool:
    """True when this process is the entrypoint of a ``ray job submit``."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or os.environ.get("RAY_JOB_ID"))


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):   # no passwd entry (some containers)
        return os.environ.get("USER") or "unknown"


def command_line(module: str, argv: list[str]) -> str:
    """``python -m <module> <argv>``, quoted so that it can be pasted into a shell."""
    return shlex.join(["python", "-m", module, *argv])


def source_tags(module: str, argv: list[str], config_file: str | None = None) -> dict[str, str]:
    """The source tags of a run started by ``python -m <module> <argv>`` (see the module docstring)."""
    tags = {
        "mlflow.source.name": f"python -m {module}",
        "mlflow.source.type": "JOB" if in_ray_job() else "LOCAL",
        "mlflow.user": user(),
        COMMAND_TAG: command_line(module, argv),
    }
    if config_file:
        tags[CONFIG_FILE_TAG] = str(config_file)
    git = git_state()
    if "commit" in git:
        tags["mlflow.source.git.commit"] = git["commit"]
    if "branch" in git:
        tags["mlflow.source.git.branch"] = git["branch"]
    if "repo_url" in git:
        tags["mlflow.source.git.repoURL"] = git["repo_url"]
    if "dirty" in git:
        tags[DIRTY_TAG] = git["dirty"]
    return tags
