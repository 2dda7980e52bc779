"""The ``emt`` command (emt/launchers/main.py): its subcommands, configs by name, hidden job flags,
status --json, the launch/ scripts as thin callers, and configs/ shipped inside the wheel."""

from __future__ import annotations

import argparse
import configparser
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PY, REPO

from emt.core import dsconfig, paths
from emt.core.config import load_config
from emt.launchers import main as cli_main
from emt.launchers.main import COMMANDS, build_parser, main, script_parser

SUBCOMMANDS = {"train", "eval", "follow", "status", "serve", "report", "export"}
HIDDEN = {"eval": ("--task-index", "--consolidate-only"), "serve": ("--in-job",)}


def strict_json(text: str) -> Any:
    """Parse as strict JSON: NaN/Infinity (which json.dumps writes by default) are not JSON."""
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def help_text(ap: argparse.ArgumentParser) -> str:
    return ap.format_help()


def test_the_subcommands_and_their_help(capsys: pytest.CaptureFixture[str]) -> None:
    ap, parsers = build_parser()
    assert set(parsers) == set(COMMANDS) == SUBCOMMANDS
    with pytest.raises(SystemExit) as ex:
        main(["--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    assert all(f"    {name}" in out for name in SUBCOMMANDS), out
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as ex:
            main([name, "--help"])
        assert ex.value.code == 0
        assert f"usage: emt {name}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as ex:
        main(["trian"])
    assert ex.value.code == 2 and "invalid choice: 'trian'" in capsys.readouterr().err


def test_flags_where_they_make_sense() -> None:
    _, parsers = build_parser()
    for name in ("train", "eval", "follow", "status"):
        assert "--runs" in help_text(parsers[name]), name
        assert "--config" in help_text(parsers[name]) and "paper" in help_text(parsers[name]), name
    assert "--json" in help_text(parsers["status"])
    assert "--follow" not in help_text(parsers["eval"])  # that is `emt follow`
    assert "--follow" in help_text(script_parser("eval", None))  # launch/eval_array.py keeps it
    # --run (the older spelling) and --runs are one option
    args = parsers["eval"].parse_intermixed_args(["--runs", "a,b"])
    assert args.run == "a,b" and parsers["eval"].parse_intermixed_args(["--run", "a"]).run == "a"


def test_overrides_before_and_after_options() -> None:
    _, parsers = build_parser()
    args = parsers["train"].parse_intermixed_args(
        ["training.learning_rate=1e-4", "--config", "debug", "--runs", "medical_mild", "--dry-run", "eval.n_samples=2"])
    assert args.overrides == ["training.learning_rate=1e-4", "eval.n_samples=2"]
    assert args.runs == "medical_mild" and args.dry_run and Path(args.config) == paths.configs_dir() / "debug.yaml"


@pytest.mark.parametrize("command,flags", sorted(HIDDEN.items()))
def test_job_internal_flags_are_hidden_but_parse(command: str, flags: tuple[str, ...]) -> None:
    _, parsers = build_parser()
    for ap in (parsers[command], script_parser(command, None)):
        text = help_text(ap)
        assert not [f for f in flags if f in text], text
    ap = parsers[command]
    if command == "eval":
        args = ap.parse_intermixed_args(["--run", "medical_mild", "--task-index", "1", "--tasks", "3"])
        assert args.task_index == 1 and args.tasks == 3
        assert ap.parse_intermixed_args(["--run", "medical_mild", "--consolidate-only"]).consolidate_only
    else:
        assert ap.parse_intermixed_args(["--name", "qwen-judge", "--in-job"]).in_job


def test_hidden_eval_flags_still_run_the_job_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_in_job(config: str, **kw: Any) -> int:
        calls.append({"config": config, **kw})
        return 0

    monkeypatch.setattr(cli_main, "eval_in_job", fake_in_job)
    assert main(["eval", "--config", "debug", "--run", "medical_mild", "--task-index", "0", "--tasks", "2"]) == 0
    assert main(["eval", "--config", "debug", "--run", "medical_mild", "--consolidate-only"]) == 0
    assert [(c["run_names"], c["task_index"], c["tasks"]) for c in calls] == \
        [(["medical_mild"], 0, 2), (["medical_mild"], None, None)]
    assert calls[0]["config"] == str(paths.configs_dir() / "debug.yaml")


def test_config_by_name_path_or_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    shipped = paths.configs_dir()
    assert shipped == REPO / "configs"  # a source checkout finds its own configs/
    assert {"paper", "debug", "organism", "judge-serve"} <= set(paths.config_names())
    for name in ("paper", "debug", "organism", "judge-serve"):
        assert paths.config_file(name) == shipped / f"{name}.yaml"
    assert paths.config_file("debug.yaml") == shipped / "debug.yaml"
    assert paths.config_file("local", "cluster") == shipped / "cluster" / "local.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("training:\n  epochs: 1\n")
    assert paths.config_file(str(own)) == own  # a path still works
    monkeypatch.chdir(tmp_path)
    (tmp_path / "debug").write_text("x: 1\n")
    assert paths.config_file("debug") == Path("debug")  # an existing file wins over a name
    with pytest.raises(ValueError, match="shipped: debug, judge-serve, organism, paper"):
        paths.config_file("papr")
    with pytest.raises(ValueError, match="shipped cluster profile; shipped: example-h100, local"):
        paths.config_file("slurm", "cluster")
    # through the command: argparse's error, exit 2, the names listed
    with pytest.raises(SystemExit) as ex:
        main(["status", "--config", "papr"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "argument --config: 'papr' is neither" in err and "organism, paper" in err


def test_packaged_copy_is_preferred_and_its_references_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An installed wheel: emt/configs holds the copy (here a copy of the checkout's configs/).
    import shutil
    packaged = tmp_path / "site" / "emt" / "configs"
    shutil.copytree(REPO / "configs", packaged)
    monkeypatch.setattr(paths, "PACKAGED_CONFIGS", packaged)
    assert paths.configs_dir() == packaged and paths.deepspeed_dir() == packaged / "deepspeed"
    cfg = load_config(paths.config_file("debug"), [f"cluster.output_root={tmp_path}/o"])
    assert cfg.source == str(packaged / "debug.yaml") and cfg.cluster.partition is None
    # `cluster: cluster/local.yaml` is read from the packaged copy (a changed copy shows it)
    local = packaged / "cluster" / "local.yaml"
    local.write_text(local.read_text().replace("partition: null", "partition: from-the-packaged-copy"))
    assert load_config(paths.config_file("debug")).cluster.partition == "from-the-packaged-copy"


def test_deepspeed_short_names_resolve_in_the_shipped_configs() -> None:
    for name in dsconfig.SHORT_NAMES:
        assert dsconfig.resolve(name) == paths.deepspeed_dir() / f"{name}.json"
        assert dsconfig.resolve(name).is_file()


def test_status_json_parses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "o"
    code = main(["status", "--config", "debug", "--runs", "medical_mild,math_strong", "--json",
                 f"cluster.output_root={root}"])
    out = capsys.readouterr().out
    doc = strict_json(out)
    assert code == 0 and doc["failed"] is False and doc["output_root"] == str(root)
    assert [r["run"] for r in doc["runs"]] == ["medical_mild", "math_strong"]
    assert all(r["train"] == "missing" and r["checkpoints"] == 0 and r["dir"].startswith(str(root / "runs"))
               for r in doc["runs"])
    assert not root.exists()  # status only reads
    # the table, with the same selection
    assert main(["status", "--config", "debug", "--runs", "math_strong", f"cluster.output_root={root}"]) == 0
    table = capsys.readouterr().out
    assert "math_strong" in table and "medical_mild" not in table
    assert main(["status", "--config", "debug", "--runs", "nope", f"cluster.output_root={root}"]) == 2
    assert "--runs nope: unknown run name" in capsys.readouterr().err


def test_status_json_of_a_run_with_a_checkpoint_and_a_nan_score(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from emt.launchers import status
    over = f"cluster.output_root={tmp_path / 'o'}"
    cfg = load_config(paths.config_file("debug"), [over])
    run = status.build_sweep(cfg, "all", ["medical_mild"])[0]
    ckpt = paths.checkpoint_dir(run.path, 2)
    ckpt.mkdir(parents=True)
    paths.checkpoint_marker(ckpt).write_text("{}")
    result = paths.result_file(status.eval_root(run, status.eval_hash(cfg)), 2)
    result.parent.mkdir(parents=True)
    result.write_text("{}")
    monkeypatch.setattr(status, "targets", lambda run: [0, 2])
    monkeypatch.setattr(status, "_result_scores", lambda root, step: {"evil": float("nan"), "hallucination": 12.5})
    assert main(["status", "--config", "debug", "--runs", "medical_mild", "--json", over]) == 0
    row = strict_json(capsys.readouterr().out)["runs"][0]  # strict JSON: a NaN score is null, never a bare NaN
    assert row["dir"] == str(run.path)
    assert row["checkpoints"] == 1 and row["step"] == 2 and row["scored"] == 1 and row["targets"] == 2
    assert row["latest_step"] == 2 and row["latest"] == {"evil": None, "hallucination": 12.5}


def test_launch_script_is_a_thin_caller_and_runs_outside_the_repo(tmp_path: Path) -> None:
    r = subprocess.run([PY, str(REPO / "launch" / "status.py"), "--config", "debug", "--runs", "medical_mild",
                        "--json", f"cluster.output_root={tmp_path}/o"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [row["run"] for row in json.loads(r.stdout)["runs"]] == ["medical_mild"]
    for script in ("launch/train.py", "launch/eval_array.py", "launch/status.py", "launch/judge_serve.py",
                   "analysis/report.py", "analysis/export.py"):
        text = (REPO / script).read_text()
        assert "script_main(" in text and "add_argument" not in text, script


def test_console_script_and_sdist_declared() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = [ln.strip() for ln in cfg["options.entry_points"]["console_scripts"].splitlines() if ln.strip()]
    assert scripts == ["emt = emt.launchers.main:main"]
    assert "graft configs" in (REPO / "MANIFEST.in").read_text().splitlines()


def test_build_copies_configs_into_the_package(tmp_path: Path) -> None:
    """setup.py's build hook (what `pip install .` runs): configs/ lands in the built emt/configs,
    and the built package, imported from outside the checkout, finds and loads them by name."""
    lib = tmp_path / "lib"
    r = subprocess.run([PY, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "build_py",
                        "--build-lib", str(lib)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    built = lib / "emt" / "configs"
    shipped = sorted(p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*") if p.is_file())
    assert shipped and sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file()) == shipped
    probe = ("from emt.core import paths, dsconfig; from emt.core.config import load_config; "
             "c = load_config(paths.config_file('debug')); "
             "print(paths.configs_dir(), dsconfig.resolve('zero2'), c.source, sep='\\n')")
    env = {**os.environ, "PYTHONPATH": str(lib)}
    r = subprocess.run([PY, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(built), str(built / "deepspeed" / "zero2.json"), str(built / "debug.yaml")]
