"""How long the eval job (the GPU job on a cluster) is held when the judge scores through the Batch API.

Run::

    python -m bench.batch_harvest                      # batches that take ~20 s each
    python -m bench.batch_harvest --batch-s 60 --steps 8

It trains the debug config's medical_mild run on the tiny model (``--steps`` training steps, a
checkpoint every 2), then evaluates it three times through ``launch/eval_array.py --local``
against ``tests.fakes.judge_server`` (started here, a thread), each into its own output root
copy so nothing is cached between them:

1. ``sync``: a synchronous judge (the baseline, the same process and machine);
2. ``batch``: the same judge with ``batch: true``; every batch answers "in progress" for about
   ``--batch-s`` seconds (polls x ``judge.batch_poll_s``) before it completes, as the API's do
   (minutes to hours there).

For each it prints the eval task's wall time (from the task's timing file: what a GPU would be
held for), the launch's wall time (tasks + consolidation, which harvests the batches on CPU), and
the ratio of the batch task's time to the sync task's. Before the harvest moved to the
consolidation job the eval task waited for its batches, so its wall time was at least
``--batch-s``; now it should stay near the synchronous task's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emt.core import paths
from emt.core.config import load_config
from emt.eval.plan import eval_hash
from tests.fakes.judge_server import BatchScript, JudgeServer

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "debug.yaml"
SMALL = ["eval.questions_per_trait=3", "eval.samples_per_question=2", "eval.max_new_tokens=12",
         "activations.layers=[]", "cluster.eval.cpus=1"]


def run(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0, res


def task_wall(root: Path, overrides: list[str]) -> float:
    """The eval task's wall time, from its timing file (one task: --tasks 1)."""
    cfg = load_config(CONFIG, overrides)
    run_dir = next((root / "runs").glob("medical_mild-*"))
    files = sorted(paths.eval_timing_dir(paths.eval_dir(run_dir, eval_hash(cfg))).glob("*.json"))
    return sum(json.loads(f.read_text())["wall_s"] for f in files)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="training steps (a checkpoint every 2)")
    ap.add_argument("--batch-s", type=float, default=20.0, help="seconds each batch stays in progress")
    ap.add_argument("--poll-s", type=float, default=1.0, help="judge.batch_poll_s")
    args = ap.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="emt-batch-harvest-"))
    try:
        trained = base / "trained"
        common = [f"training.max_steps={args.steps}", "model.tiny_pretrain_steps=40"]
        t_train, _ = run([sys.executable, "launch/train.py", "--config", str(CONFIG), "--local", "--runs",
                          "medical_mild", f"cluster.output_root={trained}", *common])
        print(f"trained medical_mild ({args.steps} steps) in {t_train:.0f} s")
        polls = max(1, round(args.batch_s / args.poll_s))
        rows = []
        for kind in ("sync", "batch"):
            root = base / kind
            shutil.copytree(trained, root, symlinks=True)
            server = JudgeServer(batch_scripts=[BatchScript(polls=polls) for _ in range(100)])
            with server as url:
                spec = [{"backend": "openai", "model": "gpt-4.1-mini", "base_url": url, "batch": kind == "batch"}]
                ov = [f"cluster.output_root={root}", *common, *SMALL, f"judge.judges={json.dumps(spec)}",
                      f"judge.batch_poll_s={args.poll_s}"]
                wall, res = run([sys.executable, "launch/eval_array.py", "--config", str(CONFIG), "--local",
                                 "--runs", "medical_mild", "--tasks", "1", *ov])
                rows.append((kind, task_wall(root, ov), wall, len(server.batches)))
        sync_task = rows[0][1]
        print(f"\n{'judge':<8}{'eval task (GPU) s':>20}{'launch s':>12}{'batches':>10}{'task / sync task':>20}")
        for kind, task_s, wall, batches in rows:
            print(f"{kind:<8}{task_s:>20.1f}{wall:>12.1f}{batches:>10}{task_s / sync_task:>20.2f}")
        print(f"\nEach batch stayed in progress for {polls} polls x {args.poll_s:g} s = ~{polls * args.poll_s:.0f} s; "
              f"the batch launch's consolidation job waited for them on CPU.")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
