"""Kubernetes label selectors: the ``labelSelector`` query parameter of a LIST.

Job: parse a selector string the way Kubernetes' ``labels.Parse`` does (apimachinery
``pkg/labels/selector.go``) into a :class:`Selector`, match it against an object's labels, and
print it in one canonical form. Pure: no I/O, no clock.

Grammar (comma is AND; spaces, tabs, CR and LF between tokens are ignored)::

    selector    := "" | requirement ("," requirement)*
    requirement := key                         exists
                 | "!" key                     does not exist
                 | key ("=" | "==") value      equals ("" when the value is left out)
                 | key "!=" value              not equal
                 | key ("in" | "notin") "(" value ("," value)* ")"
                 | key (">" | "<") integer     Kubernetes' Gt and Lt

A key is a Kubernetes qualified name (an optional lowercase DNS-1123 subdomain prefix of at
most 253 characters and ``/``, then a name of 1 to 63 characters ``[A-Za-z0-9][-A-Za-z0-9_.]*``
ending alphanumeric); a value is empty or a name of at most 63 such characters. As in
Kubernetes, a value list may hold empty values (``in (a,)`` is ``a`` or empty; ``in ()`` is
empty alone), ``==`` means ``=``, and ``!=`` and ``notin`` match an object without the key.

Invariants:

- ``parse_selector(str(s)) == s`` for every selector ``s``: :class:`Selector` keeps its
  requirements sorted and without duplicates, and each :class:`Requirement` its values sorted
  and unique, so equal selectors print the same.
- A :class:`Requirement` is valid when built (keys, values and their number are checked), so a
  selector made in code prints a string that parses.
- Errors are :class:`~kinko.errors.InvalidArgument` and name the position (1-based character)
  and what was found and expected, or the bad key or value and the rule it breaks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NoReturn

from kinko.errors import InvalidArgument

__all__ = ["EVERYTHING", "Operator", "Requirement", "Selector", "parse_selector"]

_NAME_RE: Final = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS1123_LABEL: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_RE: Final = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
# Go's strconv.ParseInt(s, 10, 64): an optional sign, then decimal digits (no spaces, no '_').
_GO_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_WHITESPACE: Final = " \t\r\n"
_SPECIAL: Final = "=!(),<>"


class Operator(StrEnum):
    """A requirement's operator, named as Kubernetes' ``selection.Operator``."""

    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GREATER_THAN = "gt"
    LESS_THAN = "lt"


# The canonical order of requirements on one key.
_ORDER: Final = {op: i for i, op in enumerate(Operator)}
_ONE_VALUE: Final = frozenset(
    {Operator.EQUALS, Operator.NOT_EQUALS, Operator.GREATER_THAN, Operator.LESS_THAN}
)
_SETS: Final = frozenset({Operator.IN, Operator.NOT_IN})


def _key_problem(key: str) -> str | None:
    """Why ``key`` is no Kubernetes qualified name, or None."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return "its prefix before '/' must not be empty"
        if "/" in prefix:
            return "it may contain at most one '/'"
        if len(prefix) > 253:
            return "its prefix must be no more than 253 characters"
        if _DNS1123_SUBDOMAIN_RE.fullmatch(prefix) is None:
            return (
                "its prefix must be a lowercase DNS-1123 subdomain (lowercase alphanumeric "
                "characters, '-' or '.', starting and ending with an alphanumeric character)"
            )
    if not name:
        return "its name must not be empty"
    if len(name) > 63:
        return "its name must be no more than 63 characters"
    if _NAME_RE.fullmatch(name) is None:
        return (
            "its name must consist of alphanumeric characters, '-', '_' or '.', starting and "
            "ending with an alphanumeric character"
        )
    return None


def _value_problem(value: str) -> str | None:
    """Why ``value`` is no Kubernetes label value, or None."""
    if len(value) > 63:
        return "a label value must be no more than 63 characters"
    if value and _NAME_RE.fullmatch(value) is None:
        return (
            "a label value must be empty or consist of alphanumeric characters, '-', '_' or "
            "'.', starting and ending with an alphanumeric character"
        )
    return None


def _go_int(text: str) -> int | None:
    """``text`` as Go's ``strconv.ParseInt(text, 10, 64)`` reads it, or None."""
    if _GO_INT_RE.fullmatch(text) is None:
        return None
    number = int(text)
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def _count_problem(operator: Operator, values: tuple[str, ...]) -> str | None:
    """Why ``operator`` cannot take ``values``, or None."""
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
        return None if not values else "takes no values"
    if operator in _SETS:
        return None if values else "needs at least one value"
    if len(values) != 1:
        return "takes exactly one value"
    if operator in (Operator.GREATER_THAN, Operator.LESS_THAN) and _go_int(values[0]) is None:
        return f"needs an integer value, got {values[0]!r}"
    return None


@dataclass(frozen=True, slots=True)
class Requirement:
    """One term of a selector: ``key``, ``operator`` and its ``values`` (sorted, unique).

    Raises InvalidArgument (a bad key or value, or a number of values the operator does not
    take).
    """

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        values = tuple(sorted(set(self.values)))
        object.__setattr__(self, "values", values)
        problem = _key_problem(self.key)
        if problem is not None:
            raise InvalidArgument(f"labelSelector: invalid label key {self.key!r}: {problem}")
        for value in values:
            problem = _value_problem(value)
            if problem is not None:
                raise InvalidArgument(
                    f"labelSelector: invalid value {value!r} for key {self.key!r}: {problem}"
                )
        problem = _count_problem(self.operator, values)
        if problem is not None:
            raise InvalidArgument(
                f"labelSelector: operator {self.operator.value!r} on key {self.key!r} {problem}"
            )

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this requirement (Kubernetes' ``Requirement.Matches``)."""
        value = labels.get(self.key)
        match self.operator:
            case Operator.EQUALS | Operator.IN:
                return value is not None and value in self.values
            case Operator.NOT_EQUALS | Operator.NOT_IN:
                return value is None or value not in self.values
            case Operator.EXISTS:
                return value is not None
            case Operator.DOES_NOT_EXIST:
                return value is None
            case Operator.GREATER_THAN | Operator.LESS_THAN:
                have = None if value is None else _go_int(value)
                want = _go_int(self.values[0])
                if have is None or want is None:
                    return False
                return have > want if self.operator is Operator.GREATER_THAN else have < want

    def __str__(self) -> str:
        match self.operator:
            case Operator.EXISTS:
                return self.key
            case Operator.DOES_NOT_EXIST:
                return f"!{self.key}"
            case Operator.IN | Operator.NOT_IN:
                return f"{self.key} {self.operator.value} ({','.join(self.values)})"
            case Operator.GREATER_THAN:
                return f"{self.key}>{self.values[0]}"
            case Operator.LESS_THAN:
                return f"{self.key}<{self.values[0]}"
            case _:
                return f"{self.key}{self.operator.value}{self.values[0]}"


def _sort_key(requirement: Requirement) -> tuple[str, int, tuple[str, ...]]:
    return requirement.key, _ORDER[requirement.operator], requirement.values


@dataclass(frozen=True, slots=True)
class Selector:
    """A conjunction of requirements (kept sorted and unique); no requirements selects all."""

    requirements: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "requirements", tuple(sorted(set(self.requirements), key=_sort_key))
        )

    @property
    def empty(self) -> bool:
        """Whether this selector selects every object."""
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy every requirement."""
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


#: The selector of the empty string: every object.
EVERYTHING: Final = Selector()


# --- parsing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "id", "end", or the symbol itself: "!", "!=", "=", "==", "(", ")", ",", ">", "<"
    text: str
    pos: int  # 0-based index in the selector text


def _lex(text: str) -> list[_Token]:
    """The tokens of ``text``, as Kubernetes' lexer reads them, then an end token."""
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in _WHITESPACE:
            i += 1
        elif ch in _SPECIAL:
            symbol = text[i : i + 2] if text[i : i + 2] in ("!=", "==") else ch
            tokens.append(_Token(symbol, symbol, i))
            i += len(symbol)
        else:
            # An identifier runs to the next whitespace or symbol; its characters are checked
            # when it is known to be a key or a value.
            j = i
            while j < len(text) and text[j] not in _WHITESPACE and text[j] not in _SPECIAL:
                j += 1
            tokens.append(_Token("id", text[i:j], i))
            i = j
    tokens.append(_Token("end", "", len(text)))
    return tokens


_OPERATORS: Final = {
    "=": Operator.EQUALS,
    "==": Operator.EQUALS,
    "!=": Operator.NOT_EQUALS,
    ">": Operator.GREATER_THAN,
    "<": Operator.LESS_THAN,
}
_WORD_OPERATORS: Final = {"in": Operator.IN, "notin": Operator.NOT_IN}


class _Parser:
    __slots__ = ("_i", "_tokens")

    def __init__(self, text: str) -> None:
        self._tokens = _lex(text)
        self._i = 0

    def _peek(self) -> _Token:
        return self._tokens[self._i]

    def _take(self) -> _Token:
        token = self._tokens[self._i]
        if token.kind != "end":
            self._i += 1
        return token

    @staticmethod
    def _fail(token: _Token, expected: str) -> NoReturn:
        found = "the end" if token.kind == "end" else repr(token.text)
        raise InvalidArgument(
            f"labelSelector: at character {token.pos + 1}: found {found}, expected {expected}"
        )

    def selector(self) -> Selector:
        requirements: list[Requirement] = []
        if self._peek().kind == "end":
            return EVERYTHING
        while True:
            if self._peek().kind not in ("id", "!"):
                self._fail(self._peek(), "a label key or '!'")
            requirements.append(self._requirement())
            token = self._take()
            if token.kind == "end":
                return Selector(tuple(requirements))
            if token.kind != ",":
                self._fail(token, "',' or the end")

    def _requirement(self) -> Requirement:
        negated = self._peek().kind == "!"
        if negated:
            self._take()
        key = self._take()
        if key.kind != "id":
            self._fail(key, "a label key")
        problem = _key_problem(key.text)
        if problem is not None:
            raise InvalidArgument(
                f"labelSelector: at character {key.pos + 1}: invalid label key {key.text!r}: "
                f"{problem}"
            )
        if negated:
            return Requirement(key.text, Operator.DOES_NOT_EXIST)
        if self._peek().kind in ("end", ","):
            return Requirement(key.text, Operator.EXISTS)
        token = self._take()
        operator = _OPERATORS.get(token.kind)
        if operator is None and token.kind == "id":
            operator = _WORD_OPERATORS.get(token.text)
        if operator is None:
            self._fail(
                token, "an operator ('=', '==', '!=', 'in', 'notin', '>', '<'), ',' or the end"
            )
        values = self._value_set() if operator in _SETS else [self._exact_value()]
        for value in values:
            problem = _value_problem(value.text)
            if problem is not None:
                raise InvalidArgument(
                    f"labelSelector: at character {value.pos + 1}: invalid value "
                    f"{value.text!r} for key {key.text!r}: {problem}"
                )
        problem = _count_problem(operator, tuple(v.text for v in values))
        if problem is not None:
            raise InvalidArgument(
                f"labelSelector: at character {token.pos + 1}: operator {token.text!r} on key "
                f"{key.text!r} {problem}"
            )
        return Requirement(key.text, operator, tuple(v.text for v in values))

    def _exact_value(self) -> _Token:
        token = self._peek()
        if token.kind in ("end", ","):
            # Kubernetes reads "key=" as "key equals the empty value".
            return _Token("id", "", token.pos)
        if token.kind != "id":
            self._fail(token, "a label value")
        return self._take()

    def _value_set(self) -> list[_Token]:
        opening = self._take()
        if opening.kind != "(":
            self._fail(opening, "'('")
        values: list[_Token] = []
        want_value = True
        while True:
            token = self._take()
            if token.kind == "id" and want_value:
                values.append(token)
                want_value = False
            elif token.kind in (",", ")"):
                # As in Kubernetes, a missing value between "(" "," and ")" is the empty one.
                if want_value:
                    values.append(_Token("id", "", token.pos))
                if token.kind == ")":
                    return values
                want_value = True
            else:
                self._fail(token, "a label value, ',' or ')'" if want_value else "',' or ')'")


def parse_selector(text: str) -> Selector:
    """The selector that the ``labelSelector`` string ``text`` means.

    The empty (or all-whitespace) string selects everything. Raises InvalidArgument (bad
    syntax, naming the 1-based character and what was found and expected; an invalid key or
    value; an operator given the wrong number or kind of values).
    """
    return _Parser(text).selector()
