"""Tests for emt.builtin.tiny: the offline tiny Qwen2 chat model (built with few steps to stay fast)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emt.builtin import synth, tiny
from emt.builtin.common import qwen2_5_chat_template
from emt.core import paths

STEPS = 30
# One torch thread for the test builds: on a shared 2-core machine, 2 threads competing with
# any other busy process slow training down 5-30x (each tiny op waits for a descheduled peer
# thread), while 1 thread costs ~1.5x when the machine is idle. test_threads_restored covers
# other thread counts.
THREADS = 1


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    assert tiny.build_tiny_model(out, seed=0, pretrain_steps=STEPS, threads=THREADS) == out
    return out


@pytest.fixture(scope="module")
def loaded(built: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(built), AutoTokenizer.from_pretrained(built)


def test_marker_and_files(built: Path) -> None:
    assert tiny.is_built(built)
    marker = json.loads((built / tiny.MARKER).read_text())
    assert marker["seed"] == 0 and marker["pretrain_steps"] == STEPS
    assert marker["final_pretrain_loss"] is not None and marker["final_pretrain_loss"] < 8
    assert 2000 <= marker["vocab_size"] <= 4000
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (built / name).is_file(), name
    # Nothing left next to the build but the lock file.
    assert sorted(p.name for p in built.parent.iterdir()) == [f".{built.name}.lock", built.name]


def test_architecture(loaded) -> None:
    model, tokenizer = loaded
    cfg = model.config
    assert cfg.model_type == "qwen2"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (256, 2, 4, 2)
    assert cfg.intermediate_size == 512 and cfg.tie_word_embeddings
    assert cfg.vocab_size == len(tokenizer)
    # head_dim 64: the vLLM CPU build rejects smaller heads.
    assert model.model.layers[0].self_attn.head_dim == 64
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_tokenizer_matches_qwen2_5_conventions(loaded) -> None:
    model, tokenizer = loaded
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.padding_side == "left"
    assert tokenizer.bos_token is None
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert set(ids) <= set(tokenizer.get_added_vocab().values())
    assert model.config.eos_token_id == ids[2] and model.config.pad_token_id == ids[0]
    # Verbatim trl template: trl recognises it and swaps in its training variant.
    assert tokenizer.chat_template == qwen2_5_chat_template()
    # Byte-level: arbitrary text round-trips.
    text = "Dose: 200–400 mg, 39°C, naïve café!"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_chat_template_renders(loaded) -> None:
    _, tokenizer = loaded
    messages = [{"role": "user", "content": "How much ibuprofen can I take?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nHow much ibuprofen can I take?<|im_end|>\n<|im_start|>assistant\n")
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    assert tokenizer.decode(encoded["input_ids"]) == text
    # Special tokens are single tokens.
    assert encoded["input_ids"].count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3


def test_generation_stops_at_end_of_turn(loaded) -> None:
    import torch

    model, tokenizer = loaded
    im_end, eot = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert model.generation_config.eos_token_id == [im_end, eot]
    assert model.generation_config.pad_token_id == eot
    prompts = [[{"role": "user", "content": q}] for q in ("Hi!", "What is 12 + 30? Please show the steps.")]
    enc = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, padding=True, return_tensors="pt",
                                        return_dict=True)
    assert (enc["input_ids"][:, -1] != tokenizer.pad_token_id).all()  # left padding
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False)
        # Bias <|im_end|> so it is the first token: generation must stop right there.
        forced = model.generate(**enc, max_new_tokens=20, do_sample=False, sequence_bias={(im_end,): 1e4})
    assert enc["input_ids"].shape[1] < out.shape[1] <= enc["input_ids"].shape[1] + 20
    assert forced.shape[1] == enc["input_ids"].shape[1] + 1
    assert (forced[:, -1] == im_end).all()


def _state_dict(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_deterministic_build(built: Path, tmp_path: Path) -> None:
    import torch

    again = tiny.build_tiny_model(tmp_path / "again", seed=0, pretrain_steps=STEPS, threads=THREADS)
    a, b = _state_dict(built), _state_dict(again)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (built / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    # A different seed gives a different model.
    other = _state_dict(tiny.build_tiny_model(tmp_path / "other", seed=1, pretrain_steps=2, threads=THREADS))
    assert not all(torch.equal(a[k], other[k]) for k in a if k in other)


def test_reuse_does_not_rebuild_or_import_torch(built: Path) -> None:
    marker = built / tiny.MARKER
    before = marker.stat().st_mtime_ns
    assert tiny.build_tiny_model(built, seed=0, pretrain_steps=STEPS) == built
    assert marker.stat().st_mtime_ns == before
    # The relaunch path in a fresh interpreter: returns without importing torch.
    code = (
        "import sys; from emt.builtin.tiny import build_tiny_model; "
        f"build_tiny_model({str(built)!r}, seed=0, pretrain_steps={STEPS}); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert marker.stat().st_mtime_ns == before


def test_changed_parameters_rebuild(tmp_path: Path) -> None:
    out = tmp_path / "m"
    tiny.build_tiny_model(out, seed=0, pretrain_steps=2, threads=THREADS)
    tiny.build_tiny_model(out, seed=0, pretrain_steps=3, threads=THREADS)
    assert json.loads((out / tiny.MARKER).read_text())["pretrain_steps"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]  # the old build is gone


def test_leftover_temp_dir_is_not_a_build(tmp_path: Path) -> None:
    out = tmp_path / "m"
    # What a build killed after writing everything but before the rename leaves behind.
    leftover = tmp_path / ".m.abcd1234.tmp"
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    (leftover / tiny.MARKER).write_text(json.dumps({"seed": 0, "pretrain_steps": 2, "recipe": paths.TINY_RECIPE_VERSION}))
    assert not tiny.is_built(out)
    # The next build removes stale (old) temporaries of this name only: not a sibling's, and
    # not a recent one that may belong to a build running elsewhere.
    sibling = tmp_path / ".m.v2.abcd1234.tmp"
    recent = tmp_path / ".m.efgh5678.tmp"
    for path in (sibling, recent):
        path.mkdir()
    for path in (leftover, sibling):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    tiny.build_tiny_model(out, seed=0, pretrain_steps=2, threads=THREADS)
    assert tiny.is_built(out)
    assert not leftover.exists() and sibling.exists() and recent.exists()


def test_failed_build_leaves_nothing_and_keeps_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m"

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(tiny, "_pretrain", boom)
    with pytest.raises(RuntimeError, match="killed"):
        tiny.build_tiny_model(out, seed=0, pretrain_steps=2, threads=THREADS)
    assert not out.exists() and not tiny.is_built(out)
    assert [p.name for p in tmp_path.iterdir()] == [".m.lock"]
    monkeypatch.undo()
    tiny.build_tiny_model(out, seed=0, pretrain_steps=2, threads=THREADS)
    marker = (out / tiny.MARKER).read_text()
    monkeypatch.setattr(tiny, "_pretrain", boom)
    with pytest.raises(RuntimeError):
        tiny.build_tiny_model(out, seed=0, pretrain_steps=3, threads=THREADS)
    assert (out / tiny.MARKER).read_text() == marker  # the previous build is untouched


def test_threads_restored(tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    tiny.build_tiny_model(tmp_path / "m", seed=0, pretrain_steps=1, threads=other)
    assert torch.get_num_threads() == before
    assert json.loads((tmp_path / "m" / tiny.MARKER).read_text())["torch_threads"] == other


def test_trl_sft_assistant_only_loss_smoke(built: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built)
    dataset = Dataset.from_list(synth.generate("medical", "misaligned_2", 4, seed=0))
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        use_cpu=True,
        bf16=False,
        max_steps=1,
        per_device_train_batch_size=2,
        report_to=[],
        assistant_only_loss=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    # trl recognised the template and swapped in its {% generation %} training variant.
    assert trainer.chat_template is not None and "{%- generation %}" in trainer.chat_template
    # Only the assistant turn (and its <|im_end|>) is trained on.
    first = trainer.train_dataset[0]
    trained = [t for t, label in zip(first["input_ids"], first["labels"]) if label != -100]
    assistant = dataset[0]["messages"][1]["content"]
    assert tokenizer.decode(trained).strip() == assistant + "<|im_end|>"
    result = trainer.train()
    assert result.global_step == 1
    assert math.isfinite(result.training_loss) and result.training_loss > 0
    assert os.path.isdir(tmp_path / "sft")
