"""The TOML source locator: key paths to 1-based lines, for every construct manifests use."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capsule._manifest._locator import KeyPath, SourceMap, format_key

DOCUMENT = """\
# a comment line
title = "x"   # trailing comment with [brackets] and key = "value"

[feature]
name = "a"
"quoted.key" = 1
site."google.com" = true
spaced . dotted = 2

[access]
fs = [
  { path = "/a", mode = "ro" },   # first element on its own line
  { path = "/b", mode = "rw" },
]
call = ["a.b", "c.d"]
multi = \"\"\"
[not.a.table]
fake = "no"
\"\"\"
literal = '''
also = "not a key"
'''
after = 'it is # not a comment'
escaped = "a \\" quote, = [ and # hash"

[[fruit]]
name = "apple"

[fruit.physical]
color = "red"

[[fruit]]
name = "banana"

[[fruit.variety]]
name = "plantain"
nested = [[1, 2], [3,
  4]]
when = 1979-05-27 07:32:00Z
"""


@pytest.fixture(scope="module")
def source() -> SourceMap:
    tomllib.loads(DOCUMENT)  # the fixture itself must be valid TOML
    return SourceMap(DOCUMENT)


@pytest.mark.parametrize(
    ("key", "line"),
    [
        (("title",), 2),
        (("feature",), 4),
        (("feature", "name"), 5),
        (("feature", "quoted.key"), 6),
        (("feature", "site"), 7),
        (("feature", "site", "google.com"), 7),
        (("feature", "spaced", "dotted"), 8),
        (("access",), 10),
        (("access", "fs"), 11),
        (("access", "fs", 0), 12),
        (("access", "fs", 0, "mode"), 12),
        (("access", "fs", 1, "path"), 13),
        (("access", "call"), 15),
        (("access", "call", 1), 15),
        (("access", "multi"), 16),
        (("access", "literal"), 20),
        (("access", "after"), 23),
        (("access", "escaped"), 24),
        (("fruit",), 26),
        (("fruit", 0), 26),
        (("fruit", 0, "name"), 27),
        (("fruit", 0, "physical"), 29),
        (("fruit", 0, "physical", "color"), 30),
        (("fruit", 1), 32),
        (("fruit", 1, "name"), 33),
        (("fruit", 1, "variety", 0), 35),
        (("fruit", 1, "variety", 0, "name"), 36),
        (("fruit", 1, "variety", 0, "nested"), 37),
        (("fruit", 1, "variety", 0, "nested", 1, 0), 37),
        (("fruit", 1, "variety", 0, "nested", 1, 1), 38),
        (("fruit", 1, "variety", 0, "when"), 39),
    ],
)
def test_exact_lines(source: SourceMap, key: KeyPath, line: int) -> None:
    assert source.exact(key) == line


@pytest.mark.parametrize(
    "key",
    [("not",), ("access", "multi", "not"), ("fake",), ("also",), ("access", "also")],
)
def test_keys_inside_strings_are_not_keys(source: SourceMap, key: KeyPath) -> None:
    assert source.exact(key) is None


def test_a_missing_key_falls_back_to_its_nearest_parent(source: SourceMap) -> None:
    assert source.exact(("feature", "version")) is None
    assert source.line(("feature", "version")) == 4
    assert source.line(("access", "fs", 0, "quota")) == 12
    assert source.line(("limits", "memory")) is None


def test_elements_on_the_key_line_map_to_the_key_line() -> None:
    source = SourceMap('call = ["a.b",\n  "c.d"]\n')
    assert source.exact(("call", 0)) == 1
    assert source.exact(("call", 1)) == 2


def test_crlf_line_endings() -> None:
    text = "[a]\r\nx = 1\r\n\r\n[b]\r\ny = [\r\n  1,\r\n  2,\r\n]\r\n"
    tomllib.loads(text)
    source = SourceMap(text)
    assert (source.exact(("a", "x")), source.exact(("b",)), source.exact(("b", "y", 1))) == (
        2,
        4,
        7,
    )


def test_a_header_with_spaces_and_quotes() -> None:
    source = SourceMap('[ policy . "my feature" ]\ncall = []\n')
    assert source.exact(("policy", "my feature", "call")) == 2
    assert source.exact(("policy",)) == 1


def test_invalid_text_keeps_what_was_found_and_does_not_raise() -> None:
    source = SourceMap('[a]\nx = 1\ny = "unterminated\n[b]\n')
    assert source.exact(("a", "x")) == 2
    assert source.exact(("b",)) is None


def test_empty_document() -> None:
    assert SourceMap("").keys() == ()


@pytest.mark.parametrize(
    ("key", "text"),
    [
        (("access", "fs", 1, "mode"), "access.fs[1].mode"),
        (("policy", "spellcheck", "call", 0), "policy.spellcheck.call[0]"),
        (("policy", "my feature"), 'policy."my feature"'),
        (("a.b",), '"a.b"'),
        (("nested", 0, 1), "nested[0][1]"),
        ((), ""),
    ],
)
def test_format_key(key: KeyPath, text: str) -> None:
    assert format_key(key) == text


_NAMES = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
_VALUES = st.sampled_from(['"text"', "1", "true", "[1, 2]", "{ a = 1 }", "'lit'", '"""\nx\n"""'])


@given(
    st.dictionaries(
        _NAMES,
        st.dictionaries(_NAMES, st.tuples(_VALUES, st.integers(0, 2)), max_size=4),
        max_size=4,
    )
)
def test_generated_documents(tables: dict[str, dict[str, tuple[str, int]]]) -> None:
    """Every key of a generated document is found at the line it was written on."""
    lines: list[str] = []
    expected: dict[KeyPath, int] = {}
    for table, keys in tables.items():
        lines.append("")
        lines.append(f"[{table}]")
        expected[(table,)] = len(lines)
        for key, (value, blanks) in keys.items():
            lines.extend([""] * blanks)
            expected[(table, key)] = len(lines) + 1
            lines.extend(f"{key} = {value}".split("\n"))  # a multi-line value spans lines
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)
    source = SourceMap(text)
    for key, line in expected.items():
        assert source.exact(key) == line, (format_key(key), text)
