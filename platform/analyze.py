"""The COCO error analysis of a trained model: what each kind of mistake costs, PR curves, the confusion
matrix and AP by size and class.

    python -m platform.analyze RUN_ID_OR_CHECKPOINT [--out DIR] [--log] [key=value ...]

A checkpoint folder / file, or an MLflow run id (its logged best checkpoint, else its last). The query
head is evaluated on the config's validation set (overrides apply, e.g. ``data.val.ann_file=...``);
figures and ``error_analysis.json`` go to ``--out`` (default ``analysis/<name>``). ``--log`` (with a run
id) adds the ``errors/*`` metrics and the files to that run. See docs/diagnostics.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from codetr.config import ConfigError
from platform.analysis.error_report import error_report, log_report, resolve_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m platform.analyze", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("source", metavar="RUN_ID_OR_CHECKPOINT")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--out", default=None, help="output folder (default: analysis/<name>)")
    parser.add_argument("--log", action="store_true", help="log metrics and figures into the MLflow run (run id)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: data.eval_batch_size")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        checkpoint, run_id = resolve_checkpoint(args.source)
        if args.log and run_id is None:
            raise ValueError("--log needs an MLflow run id, not a checkpoint path")
        out = Path(args.out or Path("analysis") / Path(args.source.rstrip("/")).name)
        report = error_report(checkpoint, out, args.overrides, args.device, args.batch_size)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a = report.analysis
    print(f"Error analysis of {args.source} (iteration {report.state.get('iteration')}): AP {report.metrics['coco/AP']:.4f}"
          f"  AP50 {a.ap50:.4f}")
    print("  kind     count   dAP50 (fixed alone)")
    for kind in ("tp",) + tuple(a.dap):
        dap = f"{100 * a.dap[kind]:+.2f}" if kind in a.dap else ""
        print(f"  {kind:<8} {a.counts[kind]:>5}   {dap}")
    print(f"Figures and error_analysis.json in {out}")
    if args.log:
        log_report(report, run_id)
        print(f"Logged errors/* and the figures to MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
