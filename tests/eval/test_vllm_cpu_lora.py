"""The vLLM version gate of emt.eval.vllm_cpu_lora: its patches target one vLLM release; any other
release logs one warning and keeps vLLM's own CPU LoRA path. No engine is started."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import pytest

from tests.conftest import require


@pytest.fixture
def vllm_cpu_lora() -> ModuleType:
    require("vllm", "vllm-cpu is installed by make test")  # skipped locally without it, a failure under CI
    # Imported here, not at the top: importing the module installs the patches, which imports
    # vLLM and torch (~30 s on this machine), and collection of the whole suite should not pay it.
    return importlib.import_module("emt.eval.vllm_cpu_lora")


@pytest.fixture
def fresh_warning(vllm_cpu_lora: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_cpu_lora, "_version_warned", False)


@pytest.mark.parametrize("version", ["0.32.0", "0.32.3", "0.32.0+cpu", "0.32.1.dev5+g1234"])
def test_supported_release(version: str, vllm_cpu_lora: ModuleType, fresh_warning: None,
                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=vllm_cpu_lora.__name__):
        assert vllm_cpu_lora.version_supported(version)
    assert not caplog.records


def test_other_release_warns_once(vllm_cpu_lora: ModuleType, fresh_warning: None,
                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=vllm_cpu_lora.__name__):
        assert not vllm_cpu_lora.version_supported("0.33.0")
        assert not vllm_cpu_lora.version_supported("1.32.0")
        assert not vllm_cpu_lora.version_supported("garbage")
    assert len(caplog.records) == 1
    assert "0.33.0" in caplog.text and "vLLM's own CPU LoRA path" in caplog.text


def test_install_falls_back_on_other_release(vllm_cpu_lora: ModuleType, fresh_warning: None,
                                             monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the kernels patch only vLLM's CPU platform")
    import vllm.lora.ops.torch_ops.lora_ops as ops

    was_installed = bool(vllm_cpu_lora._ORIGINAL)
    vllm_cpu_lora.uninstall()
    original_shrink = ops.bgmv_shrink
    try:
        monkeypatch.setattr(vllm_cpu_lora, "vllm_version", lambda: "0.99.0")
        with caplog.at_level(logging.WARNING, logger=vllm_cpu_lora.__name__):
            assert vllm_cpu_lora.install() is False
            assert vllm_cpu_lora.install() is False
        assert len(caplog.records) == 1
        assert not vllm_cpu_lora._ORIGINAL and ops.bgmv_shrink is original_shrink  # vLLM's own path
        monkeypatch.setattr(vllm_cpu_lora, "vllm_version", lambda: "0.32.0")
        assert vllm_cpu_lora.install() is True
        assert ops.bgmv_shrink is not original_shrink
    finally:
        vllm_cpu_lora.uninstall()
        monkeypatch.undo()
        if was_installed:
            vllm_cpu_lora.install()
