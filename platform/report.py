"""A repeated sweep set beside the Co-DETR paper's ablation tables.

    python -m platform.report SWEEP [--out DIR] [--tracking-uri URI]

SWEEP is a sweep name (its MLflow parent run, the newest of that name) or the parent run's id.
The report reads the sweep's child runs back from MLflow, computes the statistics of the summary
(:mod:`platform.analysis.comparisons`: per configuration mean and 95% t-interval over the seeds, paired
differences) and, for every table of the paper (:mod:`platform.analysis.paper_ablations`) whose reference row
and at least one other row the sweep measured, sets the measured rows beside the paper's:

- each row's paper AP and its difference with the table's reference row;
- the toy mean (95% CI) of the sweep's metric and the paired difference with the reference
  configuration over the seeds both ran, with its 95% t-interval;
- **direction**: whether the toy difference has the paper's sign; **tight enough**: whether its
  interval excludes 0 (only then does the toy run tell the direction at all).

It writes ``report.md`` and plots into ``--out`` (default ``runs/reports/<sweep name>``) and logs
them to the parent run under ``report/``.
"""
from __future__ import annotations

import argparse
import sys

from mlflow.tracking import MlflowClient

from platform.analysis.report import build_report, write_report
from platform.core import console
from platform.tracking.mlflow_runs import resolve_tracking_uri

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m platform.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("sweep", help="sweep name or MLflow parent run id")
    parser.add_argument("--out", help="folder for report.md and the plots (default: runs/reports/<sweep name>)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console.configure_driver()
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        markdown, figures, record = build_report(client, tracking_uri, args.sweep)
    except LookupError as e:
        print(f"report: {e}", file=sys.stderr)
        return EXIT_USAGE
    path = write_report(client, record, markdown, figures, args.out or f"runs/reports/{record.name}")
    print(markdown)
    print(f"[report] {path} (and {len(figures)} plot(s)); logged to MLflow run {record.parent_run_id} "
          f"under report/", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
