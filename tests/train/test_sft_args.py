"""training.sft_args reach trl's SFTConfig: emt.train.run.sft_kwargs and the SFTConfig built from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.conftest import REPO

from emt.core.config import SFT_MANAGED, load_config
from emt.train.run import _training_arguments, sft_kwargs

DEBUG = REPO / "configs" / "debug.yaml"


def test_sft_kwargs_add_sft_args_to_what_emt_sets(tmp_path: Path) -> None:
    plain = load_config(DEBUG)
    own = sft_kwargs(plain, tmp_path / "run", None, True, on_gpu=False)
    # Every field emt sets is one that training.sft_args may not set (and is told which key to use).
    assert set(own) <= set(SFT_MANAGED), sorted(set(own) - set(SFT_MANAGED))
    assert own["learning_rate"] == plain.training.learning_rate and own["save_steps"] == plain.checkpointing.every_steps
    cfg = load_config(DEBUG, ["training.sft_args={max_grad_norm: 0.5, adam_beta2: 0.95}"])
    kw = sft_kwargs(cfg, tmp_path / "run", None, True, on_gpu=False)
    assert kw == {**own, "max_grad_norm": 0.5, "adam_beta2": 0.95}
    # A Config built without load_config's checks still cannot override emt's own settings.
    bad = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, sft_args={"save_steps": 7}))
    with pytest.raises(ValueError, match=r"training.sft_args sets \['save_steps'\], which emt sets itself"):
        sft_kwargs(bad, tmp_path / "run", None, True, on_gpu=False)


def test_sft_args_reach_the_trainers_arguments(tmp_path: Path) -> None:
    cfg = load_config(DEBUG, ["training.sft_args={max_grad_norm: 0.25, adam_beta2: 0.95, neftune_noise_alpha: 5}"])
    args = _training_arguments(cfg, tmp_path / "medical_mild-0000abcd", None, True)
    assert (args.max_grad_norm, args.adam_beta2, args.neftune_noise_alpha) == (0.25, 0.95, 5)
    assert args.learning_rate == cfg.training.learning_rate and args.save_steps == cfg.checkpointing.every_steps
    default = _training_arguments(load_config(DEBUG), tmp_path / "medical_mild-0000abcd", None, True)
    assert (default.max_grad_norm, default.adam_beta2, default.neftune_noise_alpha) == (1.0, 0.999, None)
