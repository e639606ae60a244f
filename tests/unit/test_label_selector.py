"""Label selectors: what matches, what is refused, and the canonical form round-trips."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kinko.cluster.selector import (
    EVERYTHING,
    Operator,
    Requirement,
    Selector,
    parse_selector,
)
from kinko.errors import InvalidArgument

PROD = {"env": "prod", "tier": "web", "app.kubernetes.io/name": "shop"}
QA = {"env": "qa", "tier": "db"}
BARE: dict[str, str] = {}
EMPTY_ENV = {"env": ""}
NUMBERED = {"replicas": "5", "weird": "5x", "big": "9223372036854775807"}

# (selector, labels, matches)
MATCHES: list[tuple[str, dict[str, str], bool]] = [
    ("", PROD, True),
    ("", BARE, True),
    ("  \t\n ", QA, True),
    ("env=prod", PROD, True),
    ("env=prod", QA, False),
    ("env=prod", BARE, False),
    ("env==prod", PROD, True),
    ("env == prod", QA, False),
    ("env!=prod", PROD, False),
    ("env!=prod", QA, True),
    ("env!=prod", BARE, True),  # != matches objects without the key
    ("env=", EMPTY_ENV, True),
    ("env=", BARE, False),
    ("env!=", EMPTY_ENV, False),
    ("env!=", PROD, True),
    ("env in (prod,qa)", PROD, True),
    ("env in (prod,qa)", QA, True),
    ("env in (prod, qa)", BARE, False),
    ("env in(qa)", PROD, False),
    ("env notin (prod)", PROD, False),
    ("env notin (prod)", QA, True),
    ("env notin (prod)", BARE, True),  # notin matches objects without the key
    ("env in (prod,)", EMPTY_ENV, True),
    ("env in ()", EMPTY_ENV, True),
    ("env in ()", PROD, False),
    ("env", PROD, True),
    ("env", EMPTY_ENV, True),
    ("env", BARE, False),
    ("!env", BARE, True),
    ("!env", EMPTY_ENV, False),
    ("! env", PROD, False),
    ("env=prod,tier=web", PROD, True),
    ("env=prod,tier=db", PROD, False),
    ("env in (prod,qa),tier notin (web)", QA, True),
    ("env in (prod,qa),tier notin (web)", PROD, False),
    ("app.kubernetes.io/name=shop", PROD, True),
    ("app.kubernetes.io/name in (shop),!missing,env", PROD, True),
    ("env=prod,env=qa", PROD, False),
    (" env = prod , tier != db ", PROD, True),
    ("in in (in)", {"in": "in"}, True),
    ("notin=in", {"notin": "in"}, True),
    ("replicas>4", NUMBERED, True),
    ("replicas>5", NUMBERED, False),
    ("replicas<6", NUMBERED, True),
    ("replicas<006", NUMBERED, True),
    ("weird>1", NUMBERED, False),  # not an integer: no match
    ("missing<1", NUMBERED, False),
    ("big>9223372036854775806", NUMBERED, True),
]


@pytest.mark.parametrize(("text", "labels", "expected"), MATCHES)
def test_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


# (selector, a fragment of the message)
BAD: list[tuple[str, str]] = [
    (",", "at character 1: found ',', expected a label key or '!'"),
    ("a,", "at character 3: found the end, expected a label key or '!'"),
    (",a", "at character 1"),
    ("a,,b", "at character 3: found ','"),
    ("a b", "at character 3: found 'b', expected an operator"),
    ("a=b c", "at character 5: found 'c', expected ',' or the end"),
    ("a=b=c", "found '=', expected ',' or the end"),
    ("a=(b)", "at character 3: found '(', expected a label value"),
    ("a==!b", "found '!', expected a label value"),
    ("!", "at character 2: found the end, expected a label key"),
    ("!!a", "at character 2: found '!'"),
    ("!a=b", "found '=', expected ',' or the end"),
    ("!a in (b)", "found 'in', expected ',' or the end"),
    ("a in b", "found 'b', expected '('"),
    ("a in (b", "found the end, expected ',' or ')'"),
    ("a in (b c)", "found 'c', expected ',' or ')'"),
    ("a in (b))", "found ')', expected ',' or the end"),
    ("a in ((b))", "found '(', expected a label value, ',' or ')'"),
    ("a notin", "found the end, expected '('"),
    ("a in", "found the end, expected '('"),
    ("a ~= b", "found '~', expected an operator"),
    ("(a)", "found '(', expected a label key or '!'"),
    ("=a", "found '=', expected a label key or '!'"),
    ("a=>b", "found '>', expected a label value"),
    ("a>", "operator '>' on key 'a' needs an integer value, got ''"),
    ("a>b", "needs an integer value, got 'b'"),
    ("a<9223372036854775808", "needs an integer value"),
    ("A/b=c", "invalid label key 'A/b': its prefix must be a lowercase DNS-1123"),
    ("/b", "its prefix before '/' must not be empty"),
    ("a/", "its name must not be empty"),
    ("a/b/c", "at most one '/'"),
    ("-a", "at character 1: invalid label key '-a'"),
    ("a_", "invalid label key 'a_'"),
    ("x" * 64, "its name must be no more than 63 characters"),
    ("p" * 254 + "/a", "its prefix must be no more than 253 characters"),
    ("ünï=x", "invalid label key 'ünï'"),
    ("a=" + "v" * 64, "at character 3: invalid value"),
    ("a=-v", "invalid value '-v' for key 'a'"),
    ("a in (ok,bad_)", "at character 10: invalid value 'bad_'"),
    ("a!=b.", "invalid value 'b.'"),
    ("a=b\u00a0", "invalid value"),  # only Kubernetes' whitespace separates tokens
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_selectors_are_invalid_arguments(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_selector(text)
    assert message in str(info.value)
    assert str(info.value).startswith("labelSelector: ")


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("   ", ""),
        ("b=2, a=1", "a=1,b=2"),
        ("a==1", "a=1"),
        ("env in ( qa , prod , qa )", "env in (prod,qa)"),
        ("env notin (x)", "env notin (x)"),
        ("env in (a,)", "env in (,a)"),
        ("env in ()", "env in ()"),
        ("x, !y , z=", "x,!y,z="),
        ("a=1,a=1,a==1", "a=1"),
        (
            "a!=1,a,a in (1),!a,a>1,a<2,a notin (1),a=1",
            "a=1,a!=1,a in (1),a notin (1),a,!a,a>1,a<2",
        ),
        ("k8s.io/app=web", "k8s.io/app=web"),
        ("n<007", "n<007"),
    ],
)
def test_canonical_form(text: str, canonical: str) -> None:
    selector = parse_selector(text)
    assert str(selector) == canonical
    assert parse_selector(canonical) == selector


def test_empty_selector_is_everything() -> None:
    assert parse_selector("") == EVERYTHING == Selector()
    assert EVERYTHING.empty
    assert not parse_selector("a").empty
    assert EVERYTHING.matches({"anything": "x"})


def test_a_requirement_built_in_code_keeps_its_values_sorted_and_unique() -> None:
    assert str(Requirement("a", Operator.IN, ("b", "a", "b"))) == "a in (a,b)"


@pytest.mark.parametrize(
    ("key", "operator", "values", "message"),
    [
        ("a b", Operator.EXISTS, (), "invalid label key 'a b'"),
        ("a", Operator.EXISTS, ("x",), "takes no values"),
        ("a", Operator.DOES_NOT_EXIST, ("",), "takes no values"),
        ("a", Operator.EQUALS, (), "takes exactly one value"),
        ("a", Operator.NOT_EQUALS, ("x", "y"), "takes exactly one value"),
        ("a", Operator.IN, (), "needs at least one value"),
        ("a", Operator.GREATER_THAN, ("1", "2"), "takes exactly one value"),
        ("a", Operator.LESS_THAN, ("-1",), "invalid value '-1'"),
        ("a", Operator.EQUALS, ("x y",), "invalid value 'x y'"),
    ],
)
def test_requirements_built_in_code_are_checked(
    key: str, operator: Operator, values: tuple[str, ...], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Requirement(key, operator, values)


# --- properties -----------------------------------------------------------------------------

_NAME = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", fullmatch=True)
_DNS_LABEL = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
_PREFIX = st.lists(_DNS_LABEL, min_size=1, max_size=4).map(".".join)
_KEY = st.one_of(
    _NAME,
    st.tuples(_PREFIX, _NAME).map("/".join),
    st.sampled_from(["in", "notin", "a", "app.kubernetes.io/name"]),
)
_VALUE = st.one_of(st.just(""), _NAME, st.sampled_from(["in", "notin", "a"]))
_INT = st.integers(min_value=0, max_value=2**63 - 1).map(str)


@st.composite
def _requirements(draw: st.DrawFn) -> Requirement:
    key = draw(_KEY)
    operator = draw(st.sampled_from(list(Operator)))
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
        values: tuple[str, ...] = ()
    elif operator in (Operator.IN, Operator.NOT_IN):
        values = tuple(draw(st.lists(_VALUE, min_size=1, max_size=4)))
    elif operator in (Operator.GREATER_THAN, Operator.LESS_THAN):
        values = (draw(_INT),)
    else:
        values = (draw(_VALUE),)
    return Requirement(key, operator, values)


_SELECTORS = st.lists(_requirements(), max_size=6).map(lambda rs: Selector(tuple(rs)))
_LABELS = st.dictionaries(st.one_of(_KEY, st.just("a")), st.one_of(_VALUE, _INT), max_size=5)


@given(_SELECTORS)
def test_canonical_form_round_trips(selector: Selector) -> None:
    text = str(selector)
    assert parse_selector(text) == selector
    assert str(parse_selector(text)) == text


_SPACES = st.sampled_from(["", " ", "\t", "\n ", "\r\n"])


@given(_SELECTORS, st.data())
def test_whitespace_between_tokens_changes_nothing(selector: Selector, data: st.DataObject) -> None:
    # Whitespace may go around every symbol and separator without changing the meaning.
    pieces = re.split(r"(!=|[,()=!<>])", str(selector))
    spaced = "".join(piece + data.draw(_SPACES) for piece in pieces)
    assert parse_selector(data.draw(_SPACES) + spaced) == selector


@given(_SELECTORS, _LABELS)
def test_matching_is_the_conjunction_of_requirements(
    selector: Selector, labels: dict[str, str]
) -> None:
    reparsed = parse_selector(str(selector))
    assert reparsed.matches(labels) == selector.matches(labels)
    assert selector.matches(labels) == all(r.matches(labels) for r in selector.requirements)


@given(st.text(alphabet=st.sampled_from("ab=!(),<> \tin/.-_1é"), max_size=30))
def test_any_text_parses_or_is_an_invalid_argument(text: str) -> None:
    try:
        selector = parse_selector(text)
    except InvalidArgument as exc:
        message = str(exc)
    else:
        assert parse_selector(str(selector)) == selector
        return
    assert message.startswith("labelSelector: ")
