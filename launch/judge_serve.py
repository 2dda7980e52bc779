"""Serve a judge model on the cluster (`vllm serve`), for judges with base_url serve:<name>.

    python launch/judge_serve.py --config configs/judge-serve.yaml --name qwen-judge            # submit
    python launch/judge_serve.py --config configs/judge-serve.yaml --name qwen-judge --dry-run  # the command
    python launch/judge_serve.py --config configs/judge-serve.yaml --name qwen-judge --stop     # cancel
    python launch/judge_serve.py --config configs/judge-serve.yaml --name qwen-judge --local    # this machine

The job starts the server from the config's judge.servers entry, waits until it answers, and
writes <output_root>/serve/<name>.json; eval tasks read it when they start (emt/eval/serve.py).
Inside an existing job (slurm/judge-serve.sbatch) --in-job serves in that job.
"""

from __future__ import annotations

import sys
from pathlib import Path

from emt.launchers.cli import add_mode, mode_of, parser
from emt.core.config import ConfigError
from emt.core.logs import setup_logging
from emt.launchers.serve import judge_serve

DEFAULT = Path(__file__).resolve().parent.parent / "configs" / "judge-serve.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, DEFAULT)
    ap.add_argument("--name", required=True, help="the judge.servers entry to serve")
    add_mode(ap)
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="print the server command and the job; submit nothing")
    what.add_argument("--stop", action="store_true", help="cancel the server's job")
    what.add_argument("--in-job", action="store_true", help="serve in this process (inside an sbatch job)")
    args = ap.parse_intermixed_args(argv)
    setup_logging()
    try:
        return judge_serve(args.config, name=args.name, cluster=args.cluster, overrides=args.overrides,
                           mode=mode_of(args), dry_run=args.dry_run, stop=args.stop, in_job=args.in_job,
                           wait=True if args.wait else None)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
