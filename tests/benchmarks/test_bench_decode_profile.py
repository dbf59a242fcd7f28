"""benchmarks.decode_profile on a tiny model: the step split into parts, the engine left unpatched."""

from __future__ import annotations


def test_decode_profile_splits_the_step_and_leaves_the_engine_unpatched(tiny_model_dir, tmp_path):
    from benchmarks import decode_profile
    from lazy_core import engine

    before = dict(vars(engine.LayerLoop))
    out = tmp_path / "dp.json"
    results = decode_profile.main(["--model", str(tiny_model_dir), "--lengths", "1100", "--new-tokens", "16",
                                   "--repeats", "1", "--batch", "2", "--threads", "1", "--methods", "full", "lazy",
                                   "--out", str(out)])
    entry = results["lengths"]["1100"]
    assert entry["generate_ms"] > 0
    for name in ("full", "lazy"):
        parts = entry[name]["parts_ms"]
        assert {"layer: MLP", "layer: attention kernel", "lm_head + norm"} <= set(parts)
        assert 0 < sum(parts.values()) <= entry[name]["step_ms"] * 1.05  # the parts add up to (at most) the step
    assert "bookkeeping: scoring" in entry["lazy"]["parts_ms"] and "bookkeeping: scoring" not in entry["full"][
        "parts_ms"]
    assert dict(vars(engine.LayerLoop)) == before  # every probe removed
    assert out.with_suffix(".md").read_text().count("\n| 1100 |") == 3
