"""Sweep-level faults, end to end: real Ray Tune sweeps of the tiny Co-DETR on a real `ray start --head`
cluster (the head fixture of ``test_e2e.py``, one per module), real MLflow sqlite store.

- a trial's process SIGKILLed after its first checkpoint: Tune restarts it (``max_failures``, default 1)
  from that checkpoint, into the same MLflow child run; every trial ends FINISHED, no metric step twice,
  and the killed trial's losses and final weights are bitwise those of an uninterrupted twin;
- a trial that fails on every attempt (a batch larger than the training set): the sweep ends INCOMPLETE
  (parent FAILED, tag ``sweep.incomplete``), the summary warns and prints the command that runs exactly the
  failed trials again, and that command (``--resume --retry-failed``) does, into the same child run.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from collections import Counter

import psutil
import pytest
import torch

from codetr.engine import load_checkpoint

from tests.platform.sweep.test_e2e import REPO, _parent_and_children, _sweep_args, head  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def _env(head, tracking_uri: str) -> dict:
    return dict(head["env"], RAY_ADDRESS=head["gcs_address"], MLFLOW_TRACKING_URI=tracking_uri)


def _steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_a_killed_trial_resumes_from_its_checkpoint_into_its_run(head):
    workdir = head["workdir"]
    tracking_uri = f"sqlite:///{workdir}/mlflow.db"
    # two trials that train alike (they differ only in the validation images drawn at the very end):
    # the killed one must end with bitwise the weights and losses of the other
    args = _sweep_args(workdir, "killed", "data.batch_size=4", "scheduler.type=none", "train.checkpoint_every=1",
                       "train.epochs=3", "max_concurrent_trials=2", "search_space=null",
                       "configurations=[{platform.num_val_images: 1}, {platform.num_val_images: 0}]")
    cmd = [sys.executable, "-m", "platform.sweep", *args]
    from mlflow.tracking import MlflowClient
    MlflowClient(tracking_uri).search_experiments()   # the store's schema before the polling below
    log = workdir / "killed.log"
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(head, tracking_uri), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        victim = before = None
        while time.time() - started < 300 and proc.poll() is None and victim is None:
            time.sleep(0.5)
            try:
                client, parent, children = _parent_and_children(tracking_uri, "killed")
            except Exception:
                continue
            for child in children:
                # the driver names a checkpoint once Tune registered it: a restart can continue from it
                if child.info.status == "RUNNING" and child.data.tags.get("sweep.checkpoint"):
                    victim, before = child, child
                    break
        assert victim is not None, f"no trial reached its first checkpoint:\n{log.read_text()[-6000:]}"
        pid = int(victim.data.tags["sweep.trial_pid"])
        process = psutil.Process(pid)
        assert "ray::" in " ".join(process.cmdline()), process.cmdline()   # the trial's Ray worker process
        steps_before = len(_steps(client, victim.info.run_id, "train/loss"))
        epochs_before = before.data.metrics.get("train/epochs_done")
        process.kill()                                                       # SIGKILL
        assert proc.wait(timeout=600) == 0, log.read_text()[-8000:]
    output = log.read_text()

    client, parent, children = _parent_and_children(tracking_uri, "killed")
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.incomplete"] == "false", output
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}, output
    for child in children:
        assert child.data.metrics["train/epochs_done"] == 3
        for key in ("train/loss", "train/epochs_done", "coco/AP"):
            steps = _steps(client, child.info.run_id, key)
            assert not [s for s, n in Counter(steps).items() if n > 1], (key, sorted(steps))
        # train.log_every=1: one train/loss value per iteration, each once, up to the last epoch's end
        epoch_ends = sorted(_steps(client, child.info.run_id, "train/epochs_done"))
        assert len(epoch_ends) == 3 and sorted(_steps(client, child.info.run_id, "train/loss")) == \
            list(range(1, epoch_ends[-1] + 1))
    resumed = next(c for c in children if c.info.run_id == victim.info.run_id)   # the same MLflow run
    tags = resumed.data.tags
    assert tags["platform.resumed_from"].startswith("ray:") and "checkpoint_" in tags["platform.resumed_from"], tags
    assert tags["platform.restarts"] == "1" and tags["sweep.failures"] == "1", tags
    assert tags["sweep.trial_pid"] != str(pid) and tags["sweep.end"] == "finished"
    restart = client.get_metric_history(resumed.info.run_id, "platform/restart_from_iteration")
    epoch_ends = sorted(_steps(client, resumed.info.run_id, "train/epochs_done"))
    # back to its latest checkpoint: the end of epoch 1 or 2
    assert [m.step for m in restart] == [1] and restart[0].value in epoch_ends[:2], (restart, epoch_ends)
    other = next(c for c in children if c.info.run_id != victim.info.run_id)
    assert "platform.resumed_from" not in other.data.tags and other.data.tags.get("sweep.failures") is None
    # on CPU the restart from the checkpoint (weights, optimizer, schedule, RNG) changes nothing: the losses
    # of every step and the final weights are bitwise those of the uninterrupted trial
    def losses(run_id):
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))

    assert losses(resumed.info.run_id) == losses(other.info.run_id)
    final = [load_checkpoint(c.data.tags["sweep.checkpoint"])["model"] for c in (resumed, other)]
    assert final[0].keys() == final[1].keys() and all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    print(f"\n[fault] trial {victim.info.run_name} SIGKILLed (pid {pid}) at epochs_done={epochs_before}, "
          f"{steps_before} train/loss steps, run {before.info.status}; after: run {resumed.info.status}, "
          f"{len(_steps(client, resumed.info.run_id, 'train/loss'))} steps (unique), resumed_from "
          f"{tags['platform.resumed_from']}; sweep {time.time() - started:.0f} s")


def test_a_trial_failing_every_attempt_leaves_an_incomplete_sweep_and_its_retry_command(head):
    """batch 16 > the 8 training images: ValueError on each of its 1 + max_failures attempts."""
    workdir = head["workdir"]
    tracking_uri = f"sqlite:///{workdir}/mlflow.db"
    args = _sweep_args(workdir, "gives_up", "scheduler.type=none", "train.epochs=1", "train.lr_steps=[1]",
                       "search_space={data.batch_size: {grid: [4, 16]}}", "data.group_by_aspect_ratio=false",
                       "max_concurrent_trials=2")
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "platform.sweep", *args], cwd=REPO, env=_env(head, tracking_uri),
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout[-8000:] + proc.stderr[-4000:]
    first_s = time.time() - started
    assert proc.returncode == 1, output
    summary = proc.stdout[proc.stdout.index("\n" + "=" * 72):]
    lines = summary.strip().splitlines()
    assert lines[1].startswith("WARNING: sweep gives_up is INCOMPLETE: 1 trial(s) failed and were given up after "
                               "max_failures=1 restart(s): batch_size=16 ("), summary
    retry = lines[3].strip()
    assert retry.startswith("python -m platform.sweep experiments/sweep_tiny.yaml ") and \
        retry.endswith(" --resume --retry-failed"), summary
    assert re.search(r"^Sweep gives_up: INCOMPLETE in ", summary, re.M), summary

    client, parent, children = _parent_and_children(tracking_uri, "gives_up")
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.incomplete"] == "true"
    assert parent.data.tags["sweep.failed_trials"].startswith("batch_size=16 (")
    assert parent.data.tags["sweep.retry_command"] == retry
    by_batch = {json.loads(c.data.tags["sweep.values"])["data.batch_size"]: c for c in children}
    ok, failed = by_batch[4], by_batch[16]
    assert (ok.info.status, ok.data.tags["sweep.end"]) == ("FINISHED", "finished")
    assert (failed.info.status, failed.data.tags["sweep.end"]) == ("FAILED", "failed")
    assert failed.data.tags["sweep.failures"] == "2"       # its first attempt and its one restart
    assert failed.data.tags["sweep.end_note"].startswith(
        "ValueError: the training set (8 images) gives no full batch of 16"), \
        failed.data.tags["sweep.end_note"]

    # the printed command runs exactly the failed trial again, into its MLflow run
    retry_args = shlex.split(retry)
    assert retry_args[:3] == ["python", "-m", "platform.sweep"]
    started = time.time()
    again = subprocess.run([sys.executable, *retry_args[1:]], cwd=REPO, env=_env(head, tracking_uri),
                           capture_output=True, text=True, timeout=600)
    output = again.stdout[-8000:] + again.stderr[-4000:]
    assert again.returncode == 1 and "is INCOMPLETE: 1 trial(s) failed" in again.stdout, output
    client, parent_after, children_after = _parent_and_children(tracking_uri, "gives_up")
    assert parent_after.info.run_id == parent.info.run_id and len(children_after) == 2
    after = {json.loads(c.data.tags["sweep.values"])["data.batch_size"]: c for c in children_after}
    assert after[16].info.run_id == failed.info.run_id and after[16].info.status == "FAILED"
    assert after[16].data.tags["sweep.failures"] == "3"    # ran once more (Tune keeps counting its failures)
    assert after[16].info.end_time > failed.info.end_time
    assert after[4].info.end_time == ok.info.end_time and after[4].info.status == "FINISHED"   # left alone
    print(f"\n[fault] batch 16: FAILED after 2 attempts ({first_s:.0f} s); retried with `{retry}`: FAILED again "
          f"(failures 3), batch 4 untouched ({time.time() - started:.0f} s)")
