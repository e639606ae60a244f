"""JSON Patch (RFC 6902): the examples of its appendix A as a table, then the error cases."""

from __future__ import annotations

import copy

import pytest

from kinko.cluster.patch import apply_json_patch, json_equal, parse_pointer
from kinko.errors import InvalidArgument

# (name, document, patch, expected result) — RFC 6902 appendix A, successes.
APPENDIX_A_OK: list[tuple[str, object, list[object], object]] = [
    (
        "A.1 adding an object member",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux"}],
        {"baz": "qux", "foo": "bar"},
    ),
    (
        "A.2 adding an array element",
        {"foo": ["bar", "baz"]},
        [{"op": "add", "path": "/foo/1", "value": "qux"}],
        {"foo": ["bar", "qux", "baz"]},
    ),
    (
        "A.3 removing an object member",
        {"baz": "qux", "foo": "bar"},
        [{"op": "remove", "path": "/baz"}],
        {"foo": "bar"},
    ),
    (
        "A.4 removing an array element",
        {"foo": ["bar", "qux", "baz"]},
        [{"op": "remove", "path": "/foo/1"}],
        {"foo": ["bar", "baz"]},
    ),
    (
        "A.5 replacing a value",
        {"baz": "qux", "foo": "bar"},
        [{"op": "replace", "path": "/baz", "value": "boo"}],
        {"baz": "boo", "foo": "bar"},
    ),
    (
        "A.6 moving a value",
        {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
        [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
        {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
    ),
    (
        "A.7 moving an array element",
        {"foo": ["all", "grass", "cows", "eat"]},
        [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
        {"foo": ["all", "cows", "eat", "grass"]},
    ),
    (
        "A.8 testing a value: success",
        {"baz": "qux", "foo": ["a", 2, "c"]},
        [
            {"op": "test", "path": "/baz", "value": "qux"},
            {"op": "test", "path": "/foo/1", "value": 2},
        ],
        {"baz": "qux", "foo": ["a", 2, "c"]},
    ),
    (
        "A.10 adding a nested member object",
        {"foo": "bar"},
        [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
        {"foo": "bar", "child": {"grandchild": {}}},
    ),
    (
        "A.11 ignoring unrecognized elements",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}],
        {"foo": "bar", "baz": "qux"},
    ),
    (
        "A.14 ~ escape ordering",
        {"/": 9, "~1": 10},
        [{"op": "test", "path": "/~01", "value": 10}],
        {"/": 9, "~1": 10},
    ),
    (
        "A.16 adding an array value",
        {"foo": ["bar"]},
        [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
        {"foo": ["bar", ["abc", "def"]]},
    ),
    # Beyond the appendix: the other corners of sections 4.1 to 4.6.
    (
        "copy a member",
        {"a": {"b": [1]}},
        [{"op": "copy", "from": "/a/b", "path": "/c"}],
        {"a": {"b": [1]}, "c": [1]},
    ),
    (
        "add replaces an existing member",
        {"a": 1},
        [{"op": "add", "path": "/a", "value": 2}],
        {"a": 2},
    ),
    (
        "add at the root replaces the document",
        {"a": 1},
        [{"op": "add", "path": "", "value": [1]}],
        [1],
    ),
    (
        "replace at the root",
        {"a": 1},
        [{"op": "replace", "path": "", "value": {"b": 2}}],
        {"b": 2},
    ),
    (
        "a member named with '/' and '~'",
        {"data": {}},
        [{"op": "add", "path": "/data/a~1b~0c", "value": "x"}],
        {"data": {"a/b~c": "x"}},
    ),
    (
        "the empty member name",
        {},
        [{"op": "add", "path": "/", "value": 1}],
        {"": 1},
    ),
    (
        "test compares objects regardless of member order and numbers by value",
        {"a": {"x": 1, "y": [1.0, "s"]}},
        [{"op": "test", "path": "/a", "value": {"y": [1, "s"], "x": 1.0}}],
        {"a": {"x": 1, "y": [1.0, "s"]}},
    ),
    (
        "a value of null is a value",
        {"a": 1},
        [{"op": "replace", "path": "/a", "value": None}],
        {"a": None},
    ),
    (
        "move to the same place",
        {"a": 1},
        [{"op": "move", "from": "/a", "path": "/a"}],
        {"a": 1},
    ),
    ("an empty patch", {"a": 1}, [], {"a": 1}),
]


@pytest.mark.parametrize(
    ("doc", "patch", "expected"),
    [pytest.param(d, p, e, id=n) for n, d, p, e in APPENDIX_A_OK],
)
def test_rfc6902_examples(doc: object, patch: list[object], expected: object) -> None:
    before, ops_before = copy.deepcopy(doc), copy.deepcopy(patch)
    assert apply_json_patch(doc, patch) == expected
    assert doc == before
    assert patch == ops_before


# (name, document, patch, index named in the message, words in the message)
ERRORS: list[tuple[str, object, object, int | None, str]] = [
    (
        "A.9 testing a value: error",
        {"baz": "qux"},
        [{"op": "test", "path": "/baz", "value": "bar"}],
        0,
        "test failed",
    ),
    (
        "A.12 adding to a nonexistent target",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz/bat", "value": "qux"}],
        0,
        "no member '/baz'",
    ),
    (
        "A.15 comparing strings and numbers",
        {"/": 9, "~1": 10},
        [{"op": "test", "path": "/~01", "value": "10"}],
        0,
        "test failed",
    ),
    (
        "true is not 1",
        {"a": 1},
        [{"op": "test", "path": "/a", "value": True}],
        0,
        "test failed",
    ),
    ("not an array", {"a": 1}, {"op": "add"}, None, "array of operation objects"),
    ("an operation that is no object", {}, [[]], 0, "expected an object"),
    ("unknown op", {}, [{"op": "merge", "path": "/a"}], 0, "unknown op 'merge'"),
    ("missing op", {}, [{"path": "/a"}], 0, "unknown op none"),
    ("missing path", {}, [{"op": "remove"}], 0, "missing string 'path'"),
    ("missing value", {}, [{"op": "add", "path": "/a"}], 0, "missing 'value'"),
    ("missing from", {"a": 1}, [{"op": "copy", "path": "/b"}], 0, "missing string 'from'"),
    ("pointer without a slash", {}, [{"op": "add", "path": "a", "value": 1}], 0, "starting"),
    ("bad escape", {}, [{"op": "add", "path": "/a~2", "value": 1}], 0, "'~0' or '~1'"),
    ("remove a missing member", {"a": 1}, [{"op": "remove", "path": "/b"}], 0, "no member"),
    ("replace a missing member", {}, [{"op": "replace", "path": "/b", "value": 1}], 0, "no member"),
    (
        "the second operation fails",
        {"a": 1},
        [{"op": "remove", "path": "/a"}, {"op": "remove", "path": "/a"}],
        1,
        "no member '/a'",
    ),
    ("remove the document", {"a": 1}, [{"op": "remove", "path": ""}], 0, "whole document"),
    (
        "index past the end",
        {"a": [1]},
        [{"op": "add", "path": "/a/2", "value": 1}],
        0,
        "out of bounds",
    ),
    ("remove '-'", {"a": [1]}, [{"op": "remove", "path": "/a/-"}], 0, "array index"),
    ("leading zero", {"a": [1, 2]}, [{"op": "remove", "path": "/a/01"}], 0, "array index"),
    ("negative index", {"a": [1, 2]}, [{"op": "remove", "path": "/a/-1"}], 0, "array index"),
    (
        "a scalar as parent",
        {"a": "s"},
        [{"op": "add", "path": "/a/b", "value": 1}],
        0,
        "is a string, not an object or array",
    ),
    (
        "through a scalar",
        {"a": 1},
        [{"op": "test", "path": "/a/b/c", "value": 1}],
        0,
        "is a number, not a container",
    ),
    (
        "move into its own child",
        {"a": {"b": 1}},
        [{"op": "move", "from": "/a", "path": "/a/c"}],
        0,
        "own children",
    ),
    ("copy from nowhere", {}, [{"op": "copy", "from": "/x", "path": "/y"}], 0, "no member"),
]


@pytest.mark.parametrize(
    ("doc", "patch", "index", "words"),
    [pytest.param(d, p, i, w, id=n) for n, d, p, i, w in ERRORS],
)
def test_errors_name_the_operation(
    doc: object, patch: object, index: int | None, words: str
) -> None:
    before = copy.deepcopy(doc)
    with pytest.raises(InvalidArgument) as caught:
        apply_json_patch(doc, patch)
    message = str(caught.value)
    assert words in message
    if index is not None:
        assert f"json patch operation {index}" in message
    assert doc == before


def test_a_failed_test_never_quotes_the_values() -> None:
    with pytest.raises(InvalidArgument) as caught:
        apply_json_patch(
            {"data": {"password": "aHVudGVyMg=="}},
            [{"op": "test", "path": "/data/password", "value": "c2VjcmV0LXZhbHVl"}],
        )
    assert "aHVudGVyMg==" not in str(caught.value)
    assert "c2VjcmV0LXZhbHVl" not in str(caught.value)


def test_a_failing_patch_leaves_earlier_changes_nowhere() -> None:
    doc = {"a": {"b": 1}}
    with pytest.raises(InvalidArgument):
        apply_json_patch(doc, [{"op": "remove", "path": "/a/b"}, {"op": "remove", "path": "/x"}])
    assert doc == {"a": {"b": 1}}


def test_added_values_are_copies() -> None:
    value = {"k": [1]}
    out = apply_json_patch({}, [{"op": "add", "path": "/v", "value": value}])
    assert isinstance(out, dict)
    out["v"]["k"].append(2)
    assert value == {"k": [1]}


@pytest.mark.parametrize(
    ("pointer", "tokens"),
    [("", ()), ("/", ("",)), ("/a/b", ("a", "b")), ("/~01", ("~1",)), ("/a~1b/~0", ("a/b", "~"))],
)
def test_parse_pointer(pointer: str, tokens: tuple[str, ...]) -> None:
    assert parse_pointer(pointer) == tokens


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (True, 1, False),
        (False, 0, False),
        (None, None, True),
        ("1", 1, False),
        ([1, 2], [2, 1], False),
        ({"a": 1}, {"a": 1, "b": None}, False),
    ],
)
def test_json_equal(a: object, b: object, equal: bool) -> None:
    assert json_equal(a, b) is equal


def test_huge_array_index_is_a_patch_error_not_a_crash() -> None:
    # Regression: int() refuses digit strings over 4,300 characters (ValueError → a 500).
    with pytest.raises(InvalidArgument, match="expected an array index"):
        apply_json_patch({"a": []}, [{"op": "test", "path": "/a/" + "1" * 5000, "value": 1}])


def test_deeply_nested_value_is_a_patch_error_not_a_crash() -> None:
    value: object = []
    for _ in range(5000):
        value = [value]
    with pytest.raises(InvalidArgument, match="nested too deeply"):
        apply_json_patch({}, [{"op": "add", "path": "/a", "value": value}])
