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
