"""A local job leaves no empty literal ``logs/%j`` directory (submitit's local controller creates
its unformatted folder template); its real ``logs/<job id>`` folder keeps its logs. One tiny real
local job (a child process), no model."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import DEBUG_CONFIG


def test_local_job_leaves_no_literal_folder(tmp_path: Path) -> None:
    from emt.core.config import load_config
    from emt.jobs.slurm import drop_literal_folder, make_executor, wait_all

    cluster = load_config(DEBUG_CONFIG, [f"cluster.output_root={tmp_path}"]).cluster
    folder = tmp_path / "run" / "logs" / "%j"
    job = make_executor("consolidate", cluster, "local", folder, "emt-test").submit(int, "41")
    assert wait_all([("job", job)]) == {"job": (True, 41)}
    logs = tmp_path / "run" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == [str(job.job_id)]
    assert any(p.name.endswith("_log.err") for p in (logs / str(job.job_id)).iterdir())
    # Only an empty literal folder goes: one holding anything is left alone.
    folder.mkdir()
    (folder / "keep").write_text("x")
    drop_literal_folder(folder)
    assert (folder / "keep").is_file()
