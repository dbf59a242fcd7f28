"""benchmarks.common: replace_section rewrites only its own block of a markdown file."""

from __future__ import annotations

from benchmarks.common import replace_section, threads_of, threads_text


def test_replace_section_rewrites_only_its_block(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# B\n\n<!-- a:begin -->\nold\n<!-- a:end -->\n\ntail text\n", encoding="utf-8")
    replace_section("a", "new body", md)
    replace_section("b", "b body", md)
    replace_section("a", "newer", md)
    text = md.read_text(encoding="utf-8")
    assert text.count("<!-- a:begin -->") == 1 and "newer" in text and "old" not in text and "new body" not in text
    assert "tail text" in text and text.rstrip().endswith("<!-- b:end -->")


def _at(threads):
    return {"machine": {"torch_threads": threads}} if threads is not None else {}


def test_threads_text_says_where_a_comparison_mixes_thread_counts():
    """bf16 outputs depend on the thread count on AMX: a table must show when a method ran at another count than its
    reference."""
    assert threads_of({"machine": {"torch_threads": 2}}) == 2 and threads_of({"torch_threads": 1}) == 1
    assert threads_of({"machine": {}}) is None
    assert threads_text([(_at(2), _at(2))] * 3) == "2"
    assert threads_text([(_at(2), _at(2)), (_at(1), _at(1))]) == "1, 2"
    assert threads_text([(_at(2), _at(1))] * 4) == "2 / 1"
    assert threads_text([(_at(2), _at(1)), (_at(2), _at(2)), (_at(1), _at(2))]) == "2 of 3 at two counts"
    assert threads_text([(_at(None), _at(1))]) == "?"
    assert threads_text([(_at(2), _at(2)), (_at(None), _at(2))]) == "2 (1 unrecorded)"
