"""benchmarks.common: replace_section rewrites only its own block of a markdown file."""

from __future__ import annotations

from benchmarks.common import replace_section


def test_replace_section_rewrites_only_its_block(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# B\n\n<!-- a:begin -->\nold\n<!-- a:end -->\n\ntail text\n", encoding="utf-8")
    replace_section("a", "new body", md)
    replace_section("b", "b body", md)
    replace_section("a", "newer", md)
    text = md.read_text(encoding="utf-8")
    assert text.count("<!-- a:begin -->") == 1 and "newer" in text and "old" not in text and "new body" not in text
    assert "tail text" in text and text.rstrip().endswith("<!-- b:end -->")
