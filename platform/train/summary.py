"""The lines a person reads at the end of a run: outcome, metrics, checkpoint, how to continue, where to look."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from platform.tracking.mlflow_runs import ui_command, ui_url
from platform.tracking.model_logging import serve_command
from platform.tracking.spool import upload_command


def resume_command(argv: list[str], run_name: str) -> str:
    """The command that continues this run: the same arguments with ``platform.run_name`` pinned."""
    args = [a for a in argv if not a.startswith("platform.run_name=")]
    return " ".join(["python -m platform.train", *args, f"platform.run_name={run_name}"])


def print_summary(status: str, run_name: str, tracking_uri: str, run_id: str, elapsed: float,
                  checkpoint_path: str | None, argv: list[str] | None = None, *, error: str | None = None,
                  traceback_file: str | None = None, spool: str | None = None, model=None,
                  model_later: str | None = None) -> None:
    """The lines a person reads at the end: outcome, metrics, checkpoint, how to continue, where to look.

    A resume command is offered only when there is a checkpoint to resume from; a spool that still
    holds MLflow calls (the tracking server was unreachable) is named with the command that uploads it;
    ``model``: the run's MLflow model (:class:`platform.tracking.model_logging.LoggedDetector`), with how to serve it;
    ``model_later``: the command that logs it when MLflow was unreachable at the end of the run.
    """
    metrics = {}
    experiment_id = None
    if spool is None:
        try:
            run = MlflowClient(tracking_uri).get_run(run_id)
            metrics, experiment_id = run.data.metrics, run.info.experiment_id
        except Exception as e:   # the summary must not hide the training result
            print(f"[platform] could not read the MLflow run back: {str(e).strip().splitlines()[0][:300]}")
    coco = {k: metrics[k] for k in ("coco/AP", "coco/AP50", "coco/AP75", "coco/APs", "coco/APm", "coco/APl")
            if k in metrics}
    print("\n" + "=" * 72)
    print(f"Run {run_name}: {status} in {elapsed / 60:.1f} min")
    if error:
        print(f"Error: {error}")
        if traceback_file:
            print(f"Full traceback: {traceback_file}  (or run again with --verbose)")
    if coco:
        print("Final COCO metrics: " + "  ".join(f"{k.removeprefix('coco/')} {v:.4f}" for k, v in coco.items()))
    if "train/loss" in metrics:
        print(f"Final train/loss: {metrics['train/loss']:.4f}")
    if checkpoint_path:
        print(f"Latest checkpoint: {checkpoint_path}")
        if status != "FINISHED":
            print(f"Continue from the latest checkpoint: {resume_command(argv or [], run_name)}")
    elif status != "FINISHED":
        print("No checkpoint was written: running the same command again starts over")
    if spool:
        print(f"MLflow was unreachable: its calls wait in the spool {spool}")
        print(f"Upload them once the server is back: {upload_command(spool, tracking_uri)}")
    if model_later:
        print(f"The model was not logged (MLflow unreachable); then log it: {model_later}")
    print(f"MLflow run id: {run_id}  (experiment {experiment_id}, tracking URI {tracking_uri})")
    if model is not None:
        print(f"MLflow model:  {model.model_uri}" + (f"  registered as {model.registered_uri}"
                                                      if model.registered_uri else ""))
        print(f"Serve it:      {serve_command(tracking_uri, model.registered_uri or model.model_uri)}")
    print(f"Open the UI:   {ui_command(tracking_uri)}")
    if experiment_id is not None:
        print(f"  {'then browse' if not tracking_uri.startswith('http') else 'the run:'} "
              f"{ui_url(tracking_uri, experiment_id, run_id)}")
    print("=" * 72, flush=True)
