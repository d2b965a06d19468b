"""COCO metrics of a checkpoint on the validation set, printed and optionally logged to MLflow.

    python -m platform.evaluate --checkpoint runs/NAME/checkpoint_.../ [--config X.yaml] [key=value ...]
                                [--branch NAME ...] [--mlflow] [--run-id ID] [--json metrics.json]

The config defaults to the one stored in the checkpoint (overrides apply on top, e.g.
``data.val.ann_file=...``). Runs in this process on the CPU (or ``--device cuda``), without Ray.
``--mlflow`` logs the metrics as a new run of the config's experiment; ``--run-id`` logs them
into an existing run instead (step = the checkpoint's iteration). ``--branch atss`` (repeatable, or
``--branch all``) also evaluates that auxiliary head on its own detections from the same encoder pass
(the official test settings: see docs/diagnostics.md): its metrics are ``branch/atss/coco/*``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from codetr.config import ConfigError
from platform.analysis.checkpoint_eval import evaluate_checkpoint
from platform.tracking import mlflow_runs
from platform.tracking.source import source_tags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m platform.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or checkpoint.pt")
    parser.add_argument("--config", default=None, help="experiment YAML (default: the checkpoint's config)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: data.eval_batch_size")
    parser.add_argument("--mlflow", action="store_true", help="log the metrics as a new MLflow run")
    parser.add_argument("--run-id", default=None, help="log the metrics into this existing MLflow run")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the metrics as JSON")
    parser.add_argument("--branch", action="append", default=None, metavar="NAME",
                        help="also evaluate this auxiliary head on its own (repeatable; 'all': every head)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    try:
        metrics, state = evaluate_checkpoint(args.checkpoint, args.config, args.overrides, args.device,
                                             args.batch_size, branches=args.branch)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    iteration = int(state.get("iteration", 0))
    print(f"Checkpoint {args.checkpoint} (epoch {state.get('epoch')}, iteration {iteration}), "
          f"evaluated in {time.time() - start:.0f} s:")
    for key, value in metrics.items():
        print(f"  {key:<28} {value:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "iteration": iteration, "metrics": metrics}, f, indent=1)
    if args.mlflow or args.run_id:
        uri = mlflow_runs.resolve_tracking_uri()
        run_id = args.run_id
        if run_id is None:
            experiment = state["config"]["platform"]["experiment_name"]
            run_name = f"eval-{state['config']['platform'].get('run_name') or 'checkpoint'}-it{iteration}"
            tags = {**source_tags("platform.evaluate", sys.argv[1:] if argv is None else list(argv), args.config),
                    "mlflow.runName": run_name, "platform.checkpoint": str(args.checkpoint),
                    "platform.source_run_id": str(state.get("mlflow_run_id"))}
            run_id, _ = mlflow_runs.start_run(uri, experiment, run_name, tags, resume=False)
        mlflow_runs.RunLogger(uri, run_id).log_metrics(metrics, step=iteration)
        if args.run_id is None:
            mlflow_runs.end_run(uri, run_id, "FINISHED")
        print(f"Logged to MLflow run {run_id} ({uri})")
    return 0



if __name__ == "__main__":
    sys.exit(main())
