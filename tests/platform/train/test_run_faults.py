"""Two `python -m platform.train` runs at once against one MLflow sqlite store, each on its own local Ray
cluster with 2 CPU workers (a real torch.distributed process group): both end FINISHED with every metric,
and, while they train, every socket their processes listen on (Ray's servers, the workers, the
rendezvous store of rank 0, gloo) is on 127.0.0.1.
"""
from __future__ import annotations

import subprocess
import time
import zipfile

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.platform.train.test_e2e import REPO, _env, _train_args

pytestmark = pytest.mark.slow

TINY = ["data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.batch_size=2", "train.epochs=2",
        "train.lr_steps=[2]", "train.log_every=1", "train.checkpoint_every=1", "platform.num_val_images=0",
        "data.augment.scales=[96]", "data.augment.max_size=96", "data.augment.eval_scale=96",
        "data.augment.eval_max_size=96"]
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def _listening(pids: set[int]) -> set[tuple[int, str, int, str]]:
    """(pid, ip, port, process name) of every listening TCP socket of ``pids``."""
    out = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.Error:
                name = "?"
            out.add((conn.pid, conn.laddr.ip, conn.laddr.port, name))
    return out


def _tree(pid: int) -> set[int]:
    try:
        root = psutil.Process(pid)
        return {pid} | {p.pid for p in root.children(recursive=True)}
    except psutil.Error:
        return set()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_runs")
    env = _env(workdir)
    MlflowClient(env["MLFLOW_TRACKING_URI"]).search_experiments()   # the store's schema, before both start
    procs, logs = {}, {}
    started = time.time()
    for name in ("one", "two"):
        logs[name] = open(workdir / f"{name}.log", "w")
        procs[name] = subprocess.Popen(_train_args(workdir, name, *TINY), cwd=REPO, env=env, stdout=logs[name],
                                       stderr=subprocess.STDOUT)
    # while both train (rank 0 has printed its first progress line: the process group is up), list the sockets
    sockets, workers_seen = set(), set()
    deadline = time.time() + 600
    while time.time() < deadline and all(p.poll() is None for p in procs.values()):
        texts = {n: (workdir / f"{n}.log").read_text() for n in procs}
        if all(" iter " in t for t in texts.values()):
            for _ in range(3):
                pids = set().union(*(_tree(p.pid) for p in procs.values()))
                sockets |= _listening(pids)
                workers_seen |= {pid for pid in pids if "TrainWorker" in " ".join(_cmdline(pid))}
                time.sleep(1)
            break
        time.sleep(1)
    codes = {n: p.wait(timeout=900) for n, p in procs.items()}
    for log in logs.values():
        log.close()
    outputs = {n: (workdir / f"{n}.log").read_text() for n in procs}
    return {"workdir": workdir, "codes": codes, "outputs": outputs, "sockets": sockets, "workers": workers_seen,
            "uri": env["MLFLOW_TRACKING_URI"], "seconds": time.time() - started}


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def test_two_runs_on_one_sqlite_store_both_finish_with_all_metrics(two_runs):
    for name, code in two_runs["codes"].items():
        assert code == 0, f"{name}: exit {code}\n{two_runs['outputs'][name][-6000:]}"
    client = MlflowClient(two_runs["uri"])
    experiment = client.get_experiment_by_name("codetr_tiny")
    for name in ("one", "two"):
        (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`platform.run_name` = '{name}'")
        assert run.info.status == "FINISHED", two_runs["outputs"][name][-4000:]
        # 2 epochs, checkpointed after each, evaluated at the end, train/* logged every iteration, each step once
        ends = [m.step for m in client.get_metric_history(run.info.run_id, "train/epochs_done")]
        assert len(ends) == 2 and ends[1] == 2 * ends[0], ends
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == \
            list(range(1, ends[1] + 1))
        evaluated = sorted(m.step for m in client.get_metric_history(run.info.run_id, "coco/AP"))
        assert evaluated and evaluated[-1] == ends[-1] and set(evaluated) <= set(ends), (evaluated, ends)
        assert run.data.params["derived.world_size"] == "2"
    print(f"\n[two runs] both FINISHED in {two_runs['seconds']:.0f} s")


def test_a_local_run_listens_on_loopback_only(two_runs):
    sockets = two_runs["sockets"]
    assert two_runs["workers"], "no Ray Train worker process seen while the runs trained"
    worker_sockets = [s for s in sockets if s[0] in two_runs["workers"]]
    assert worker_sockets, sockets   # the workers' own servers, gloo and rank 0's rendezvous store
    assert sockets and all(ip in LOOPBACK for _, ip, _, _ in sockets), sorted(sockets)
    print("\n[sockets] " + "\n[sockets] ".join(f"{name} (pid {pid}) {ip}:{port}"
                                             for pid, ip, port, name in sorted(sockets, key=lambda s: (s[3], s[2]))))


def _complete(path) -> bool:
    """A checkpoint file whose writing has ended: torch.save writes a zip, whose central directory comes last."""
    return path.is_file() and zipfile.is_zipfile(path)


def test_disk_full_at_a_checkpoint_fails_naming_it_and_the_resume_continues_from_the_last_good_one(tmp_path):
    """The disk "fills" under the training worker after its first checkpoint: its file-size limit
    (RLIMIT_FSIZE, lowered from outside with prlimit, as a full disk would) is below a checkpoint's size,
    so its next checkpoint write fails for real (EFBIG). The run fails with CheckpointWriteError naming the
    file and the cause; the same command (same run name) resumes from the first checkpoint and finishes."""
    env = _env(tmp_path)
    args = _train_args(tmp_path, "full", *TINY, "train.epochs=3", "train.lr_steps=[3]", "platform.num_workers=1",
                       "data.batch_size=4")
    storage = tmp_path / "runs" / "full"
    log = tmp_path / "full.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        worker = None
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and worker is None:
            time.sleep(0.5)
            if any(_complete(d / "checkpoint.pt") for d in storage.glob("checkpoint_*")):   # its copy has ended
                workers = [pid for pid in _tree(proc.pid) if "RayTrainWorker" in " ".join(_cmdline(pid))]
                if workers:
                    worker = psutil.Process(workers[0])
                    worker.rlimit(psutil.RLIMIT_FSIZE, (8_000_000, 8_000_000))   # a checkpoint is larger
        assert worker is not None, f"no checkpoint while the run trained:\n{log.read_text()[-6000:]}"
        code = proc.wait(timeout=600)
    output = log.read_text()
    assert code != 0, output[-6000:]
    line = next((ln for ln in output.splitlines() if "training failed" in ln), "")
    # the torch.save of the worker or Ray's copy into storage, whichever writes past the limit first
    assert "CheckpointWriteError" in line and "could not be written: " in line, output[-6000:]
    assert "File too large" in line and "(errno 27)" in line, output[-6000:]
    assert "checkpoint.pt" in line or f"{storage} could not" in line    # the file or the run folder being written
    good = sorted(d.name for d in storage.glob("checkpoint_*") if _complete(d / "checkpoint.pt"))
    assert good, output[-4000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("codetr_tiny")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.`platform.run_name` = 'full'")
    assert run.info.status == "FAILED"
    steps_before = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))

    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.`platform.run_name` = 'full'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["platform.resumed_from"].startswith("ray:") and \
        run.data.tags["platform.resumed_from"].endswith(good[-1]), (run.data.tags, good)
    ends = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/epochs_done"))
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert len(ends) == 3 and steps == list(range(1, ends[-1] + 1)), (ends, steps)
    print(f"\n[disk full] {line.strip()[:400]}\n[disk full] last good checkpoint {good[-1]}; train/loss steps "
          f"{steps_before[-1] if steps_before else 0} before, {len(steps)} after the resume (each once); FINISHED")
