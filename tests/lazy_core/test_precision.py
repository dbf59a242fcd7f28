"""lazy_core.precision: what dtype="auto" stands for, by CPU (AMX-BF16, AVX512-BF16, neither), and the
LAZYLLM_AUTO_DTYPE override the suite and users pin it with."""

from __future__ import annotations

import pytest
import torch

from lazy_core import precision
from lazy_core.loading import resolve_dtype

# torch.cpu.get_capabilities() as it reads on the project's two CPUs, and on an x86 CPU with neither
AMX_XEON = {"avx2": True, "avx512_bf16": True, "amx_bf16": True, "amx_tile": True, "amx_int8": True}
AVX512_EPYC = {"avx2": True, "avx512_bf16": True, "amx_bf16": False, "amx_tile": False}
AVX2_ONLY = {"avx2": True, "avx512_bf16": False, "amx_bf16": False}
CPUINFO = "processor : 0\nflags\t\t: fpu vme sse sse2 avx avx2 avx512f {extra}\nbogomips : 5200.00\n"


@pytest.mark.parametrize(("capabilities", "native"), [(AMX_XEON, True), (AVX512_EPYC, True), (AVX2_ONLY, False),
                                                      ({"amx_bf16": True}, True), ({}, False)])
def test_bf16_from_torchs_capability_report(capabilities, native):
    assert precision.bf16_in_capabilities(capabilities) is native


@pytest.mark.parametrize(("extra", "native"), [("amx_bf16 amx_tile avx512_bf16", True), ("avx512_bf16", True),
                                               ("amx_bf16", True), ("avx512_vnni", False), ("", False),
                                               ("avx512_bf16x", False)])
def test_bf16_from_cpuinfo_flags(extra, native):
    assert precision.bf16_in_cpuinfo(CPUINFO.format(extra=extra)) is native


@pytest.fixture
def fresh_detection(monkeypatch):
    """cpu_has_native_bf16 is cached per process: clear it around a test that fakes the CPU."""
    monkeypatch.delenv(precision.AUTO_DTYPE_ENV, raising=False)
    precision.cpu_has_native_bf16.cache_clear()
    yield
    precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize(("capabilities", "expected"), [(AMX_XEON, torch.bfloat16), (AVX512_EPYC, torch.bfloat16),
                                                        (AVX2_ONLY, torch.float32)])
def test_auto_on_cpu_follows_the_detected_units(fresh_detection, monkeypatch, capabilities, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(capabilities))
    assert precision.auto_dtype("cpu") == expected
    assert resolve_dtype("auto", "cpu") == expected


def test_cpuinfo_decides_when_torch_cannot_report(fresh_detection, monkeypatch, tmp_path):
    def broken():
        raise RuntimeError("no cpuinfo backend")

    monkeypatch.setattr(torch.cpu, "get_capabilities", broken)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "Path", lambda _: cpuinfo)
    cpuinfo.write_text(CPUINFO.format(extra="amx_bf16"))
    assert precision.auto_dtype("cpu") == torch.bfloat16
    precision.cpu_has_native_bf16.cache_clear()
    cpuinfo.write_text(CPUINFO.format(extra="avx512_vnni"))
    assert precision.auto_dtype("cpu") == torch.float32
    precision.cpu_has_native_bf16.cache_clear()
    cpuinfo.unlink()  # neither source: no bf16 claimed
    assert precision.auto_dtype("cpu") == torch.float32


@pytest.mark.parametrize(("value", "expected"), [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                                 (" BFloat16 ", torch.bfloat16), ("float16", torch.float16)])
def test_the_environment_pins_auto_on_every_device(fresh_detection, monkeypatch, value, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(AVX2_ONLY))
    monkeypatch.setenv(precision.AUTO_DTYPE_ENV, value)
    assert precision.auto_dtype("cpu") == expected and precision.auto_dtype("meta") == expected
    assert resolve_dtype("auto", "cpu") == expected
    assert resolve_dtype("float32", "cpu") == torch.float32  # a named dtype is never overridden


def test_an_empty_override_lets_the_device_choose_and_a_bad_one_is_refused(fresh_detection, monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(AMX_XEON))
    monkeypatch.setenv(precision.AUTO_DTYPE_ENV, "")
    assert precision.auto_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv(precision.AUTO_DTYPE_ENV, "int8")
    with pytest.raises(ValueError, match=r"LAZYLLM_AUTO_DTYPE='int8' .*'bfloat16', 'float16', 'float32'.*unset it"):
        precision.auto_dtype("cpu")
