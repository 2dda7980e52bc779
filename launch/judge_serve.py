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

from emt.launchers.main import script_main


def main(argv: list[str] | None = None) -> int:
    """``emt serve``'s arguments and code (emt/launchers/main.py), with this script's help text."""
    return script_main("serve", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
