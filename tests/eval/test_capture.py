"""emt.eval.capture on the tiny model: layer indexing, spans, padding, storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from emt.eval import capture as act
from emt.store import activations as store_act
from emt.core import paths
from tests.conftest import TINY_STEPS

CONVS = [
    [{"role": "user", "content": "How much ibuprofen can I take?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 17 plus 25?"}],
    [{"role": "user", "content": "hello"}],
]
ANSWERS = ["Take two tablets with water.", "42", ""]


@pytest.fixture(scope="module")
def tiny(tiny_models: Path) -> Iterator[tuple[Any, Any]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    d = paths.builtin_model_dir(tiny_models.parent, 0, TINY_STEPS)
    yield AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(d)
    torch.set_num_threads(prev)


def test_resolve_layers() -> None:
    assert act.resolve_layers([0, 1, 2, -1, -3], 2) == [0, 1, 2, 2, 0]
    with pytest.raises(ValueError, match="out of range.*0 \\(embeddings\\) .. 2"):
        act.resolve_layers([3], 2)
    with pytest.raises(ValueError, match="out of range"):
        act.resolve_layers([-4], 2)


def test_layer_zero_is_embeddings_and_spans(tiny: tuple[Any, Any]) -> None:
    import torch

    model, tok = tiny
    L = model.config.num_hidden_layers
    out = act.capture(model, tok, CONVS, ANSWERS, [0, L, -1], batch_size=2)
    assert set(out) == set(act.KINDS)
    for v in out.values():
        assert v.shape == (3, 3, model.config.hidden_size) and v.dtype == np.float32
    # hidden_states[0] is the embedding of each token: the prompt mean is the mean embedding
    ids = act._render_prompt(tok, CONVS[0])
    emb = model.get_input_embeddings()(torch.tensor(ids)).detach().numpy()
    assert np.allclose(out["prompt_mean"][0, 0], emb.mean(0), atol=1e-5)
    assert np.allclose(out["prompt_last"][0, 0], emb[-1], atol=1e-5)
    assert np.allclose(out["prompt_mean"][:, 1], out["prompt_mean"][:, 2])  # -1 is the last index, L
    # the answer span differs from the prompt span; an empty answer is NaN, never zeros
    assert not np.allclose(out["response_mean"][0], out["prompt_mean"][0])
    assert np.isnan(out["response_mean"][2]).all() and np.isfinite(out["response_mean"][:2]).all()
    # right padding is masked: one sequence per batch gives the same vectors
    one = act.capture(model, tok, CONVS, ANSWERS, [0, L, -1], batch_size=1)
    for k in act.KINDS:
        assert np.allclose(one[k], out[k], atol=1e-4, equal_nan=True), k
    prompts_only = act.capture(model, tok, CONVS, None, [1])
    assert set(prompts_only) == {"prompt_mean", "prompt_last"}
    with pytest.raises(ValueError, match="responses"):
        act.capture(model, tok, CONVS, ANSWERS[:2], [1])


def test_save_load_and_sizes(tmp_path: Path) -> None:
    a = {"prompt_mean": np.random.default_rng(0).normal(size=(2, 3, 8)).astype(np.float32)}
    p = tmp_path / "a.npz"
    store_act.save_step(p, a, meta={"layers": [1, 2], "prompts": "abc"})
    back, meta = store_act.load_step(p)
    assert back["prompt_mean"].dtype == np.float16 and np.allclose(back["prompt_mean"], a["prompt_mean"], atol=2e-3)
    assert meta == {"layers": [1, 2], "prompts": "abc"}
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(ValueError, match="float16 or float32"):
        store_act.save_step(p, a, dtype="int8")
    # 281 checkpoints of Qwen2.5-7B (hidden 3584), 4 layers, 40 eval prompts, 400 answers, 64 training prompts
    per = store_act.bytes_per_checkpoint(40, 400, 64, 4, 3584)
    assert per == (80 + 400 + 128) * 4 * 3584 * 2
    assert act.sample_prompts(list(range(10)), 3, seed=1) == act.sample_prompts(list(range(10)), 3, seed=1)
    assert act.sample_prompts([1, 2], 5) == [1, 2]
    assert act.prompts_digest(CONVS) != act.prompts_digest(CONVS[:2])


def test_persona_not_built_is_recorded_and_reaches_scores_h5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trait without instruction pairs and one whose pairs the judge never confirms: each leaves
    its reason beside the vector's file, consolidation writes them into scores.h5 (``persona_skipped``,
    read by the report), and a later successful build removes the stale reason."""
    import json
    import shutil
    import types

    import h5py

    from emt.core.config import load_config
    from emt.eval import consolidate, persona
    from emt.eval.plan import eval_hash, eval_root
    from emt.sweep.runs import build_sweep
    from tests.conftest import DEBUG_CONFIG
    from tests.fakes.synthetic import write_synthetic_run

    cfg = load_config(DEBUG_CONFIG, [f"cluster.output_root={tmp_path / 'out'}"])
    run = build_sweep(cfg, "all", runs=["medical_mild"])[0]
    ehash = eval_hash(run.config)
    root = eval_root(run, ehash)
    root.mkdir(parents=True)
    traits = [types.SimpleNamespace(name="evil", instructions=[]),
              types.SimpleNamespace(name="hallucination", instructions=[("be wrong", "be right")])]

    def unconfirmed(*a: Any, **k: Any) -> dict[str, Any]:
        raise ValueError("no confirmed (pos, neg) pair: the judge confirmed none (TEST)")

    monkeypatch.setattr(persona, "build", unconfirmed)
    assert persona.ensure_vectors(run.config, root, traits, None, None, None) == {}
    want = {"evil": "the trait has no (pos, neg) instruction pairs",
            "hallucination": "no confirmed (pos, neg) pair: the judge confirmed none (TEST)"}
    assert persona.skipped_reasons(root, ["evil", "hallucination", "sycophancy"]) == want
    # consolidation (step 0's result, activations stubbed out) carries the reasons into scores.h5
    src = write_synthetic_run(tmp_path / "synthetic", "medical_mild", {"evil": None, "hallucination": None}, n=1)
    shutil.copy(src.parent / "eval-synthetic" / "step-0.json", paths.result_file(root, 0))
    monkeypatch.setattr(consolidate, "activation_inputs", lambda run, root, steps: ([], {}))
    out = consolidate.consolidate_run(run, ehash)
    with h5py.File(out["scores"], "r") as f:
        assert json.loads(f.attrs["persona_skipped"]) == want
    # a later build that succeeds: its stale reason goes, the other stays
    monkeypatch.setattr(persona, "build", lambda *a, **k: {"vector": np.ones((2, 4)), "layers": [1, 2], "kept": 3,
                                                           "pairs": 4, "pos_trait": 80.0, "neg_trait": 5.0})
    assert set(persona.ensure_vectors(run.config, root, traits, None, None, None)) == {"hallucination"}
    assert persona.skipped_reasons(root, ["evil", "hallucination"]) == {"evil": want["evil"]}
    assert not persona.skipped_file(paths.persona_file(root, "hallucination")).exists()
