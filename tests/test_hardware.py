import pytest

from langground import _hardware
from langground.engine import builders

ICE_LAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile\n"
NEOVERSE_V1 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_cpu_flags_parse_x86_and_arm_cpuinfo():
    assert "avx512_vnni" in _hardware.cpu_flags(ICE_LAKE)
    assert "bf16" in _hardware.cpu_flags(NEOVERSE_V1)
    assert _hardware.cpu_flags("no flags here\n") is None


@pytest.mark.parametrize(
    ("cpuinfo", "native"), [(ICE_LAKE, False), (SAPPHIRE_RAPIDS, True), (NEOVERSE_V1, True)]
)
def test_auto_precision_picks_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch, cpuinfo, native):
    # oneDNN "supports" bf16 on every AVX512-BW CPU by emulation, which trains ~5x slower than fp32
    monkeypatch.setattr(_hardware, "cpu_bf16_runs", lambda: True)
    parse = _hardware.cpu_flags
    monkeypatch.setattr(_hardware, "cpu_flags", lambda: parse(cpuinfo))
    _hardware.cpu_bf16_native.cache_clear()
    try:
        assert _hardware.cpu_bf16_native() is native
        auto = builders.resolve_precision("auto", builders.torch.device("cpu"))
        assert auto.name == ("bf16" if native else "fp32")
    finally:
        _hardware.cpu_bf16_native.cache_clear()
