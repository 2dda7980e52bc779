"""emt.config: YAML + overrides into frozen dataclasses; every problem reported at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from emt.config import Config, ConfigError, load_config, stable_hash, to_yaml

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_configs_load() -> None:
    paper = load_config(CONFIGS / "paper.yaml")
    assert paper.model.name == "Qwen/Qwen2.5-7B-Instruct"
    assert (paper.lora.r, paper.lora.alpha, paper.lora.dropout, paper.lora.use_rslora) == (32, 64, 0.0, True)
    assert set(paper.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    t = paper.training
    assert (t.learning_rate, t.lr_scheduler, t.warmup_steps, t.weight_decay) == (1e-5, "linear", 5, 0.01)
    assert (t.per_device_batch_size, t.grad_accum, t.epochs, t.max_length, t.seed) == (2, 8, 1.0, 2048, 0)
    assert t.assistant_only_loss and paper.checkpointing.every_steps == 2
    assert paper.data.heldout_fraction == 0.1
    assert paper.cluster.partition == "gpu"  # from the cluster profile the config names
    debug = load_config(CONFIGS / "debug.yaml")
    assert debug.model.name == "builtin:tiny" and debug.data.root == "builtin:debug"
    assert debug.cluster.output_root == "outputs"


def test_every_yaml_starts_with_the_command_that_uses_it() -> None:
    for p in sorted(CONFIGS.rglob("*.yaml")):
        first = p.read_text().splitlines()[0]
        assert first.startswith("# python launch/"), f"{p}: first line should give the command: {first!r}"


def test_frozen() -> None:
    cfg = load_config(CONFIGS / "debug.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.learning_rate = 1.0  # type: ignore[misc]


def test_unknown_key_names_file_line_and_valid_keys(tmp_path: Path) -> None:
    p = write(tmp_path, "training:\n  learning_rate: 1e-4\n  lrate: 3\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert f"{p}:3" in msg and "unknown key 'lrate' in training" in msg
    assert "learning_rate" in msg and "grad_accum" in msg  # the valid keys are listed


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'trainig' in top level; valid keys: checkpointing, cluster"):
        load_config(write(tmp_path, "trainig: {}\n"))


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    p = write(tmp_path, "training:\n  grad_accum: two\n  method: qlora\nlora:\n  r: [1]\nbogus: 1\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert len(ei.value.problems) == 4
    text = str(ei.value)
    assert f"{p}:2" in text and "expected an integer" in text
    assert "must be one of lora, full" in text
    assert f"{p}:5" in text


def test_semantic_validation_all_at_once(tmp_path: Path) -> None:
    p = write(tmp_path, "training:\n  learning_rate: -1\n  grad_accum: 0\ndata:\n  heldout_fraction: 1.5\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert len(ei.value.problems) == 3
    assert any(f"{p}:2" in x and "learning_rate" in x for x in ei.value.problems)
    assert any(f"{p}:5" in x and "heldout_fraction" in x for x in ei.value.problems)


def test_overrides(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "debug.yaml", ["training.learning_rate=2e-5", "lora.target_modules=[q_proj,v_proj]",
                                                "cluster.train.time_min=7", "training.max_steps=null"])
    assert cfg.training.learning_rate == 2e-5
    assert cfg.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.cluster.train.time_min == 7 and cfg.cluster.train.cpus == 2  # untouched siblings kept


def test_bad_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(CONFIGS / "debug.yaml", ["training.lr=1", "nodot", "foo.bar=1"])
    text = str(ei.value)
    assert "override 'training.lr=1': unknown key 'lr' in training" in text
    assert "expected key=value" in text and "valid sections" in text


def test_cluster_profile_from_cli_and_missing(tmp_path: Path) -> None:
    prof = write(tmp_path, "partition: big\ntrain: {gpus: 2}\n", "prof.yaml")
    cfg = load_config(CONFIGS / "debug.yaml", cluster=prof)
    assert cfg.cluster.partition == "big" and cfg.cluster.train.gpus == 2
    bad = write(tmp_path, "partiton: big\n", "bad.yaml")
    with pytest.raises(ConfigError, match=rf"{bad}:1: unknown key 'partiton' in cluster"):
        load_config(CONFIGS / "debug.yaml", cluster=bad)
    with pytest.raises(ConfigError, match="cluster profile .*nope.yaml not found"):
        load_config(write(tmp_path, "cluster: nope.yaml\n"))


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: not valid YAML"):
        load_config(write(tmp_path, "training:\n  a: [1,\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_hash_is_stable_and_sensitive() -> None:
    a = load_config(CONFIGS / "debug.yaml")
    b = load_config(CONFIGS / "debug.yaml")
    c = load_config(CONFIGS / "debug.yaml", ["training.learning_rate=1e-3"])
    assert stable_hash(a) == stable_hash(b) != stable_hash(c)
    assert len(stable_hash(a)) == 8
    assert "learning_rate" in to_yaml(a)
    assert isinstance(Config(), Config)


def test_resources_beyond_cluster_limits_are_reported_together() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(CONFIGS / "debug.yaml", ["cluster.train.gpus=5", "cluster.eval.cpus=9"])
    text = str(ei.value)
    assert len(ei.value.problems) == 2
    assert "cluster.train.gpus: 5 exceeds this cluster's limit cluster.limits.gpus=4" in text
