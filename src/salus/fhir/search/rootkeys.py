"""Which top-level JSON keys a search expression can find values under.

Most R4 SearchParameter expressions (FHIR R4 ``searchparameter.html``,
``SearchParameter.expression``) are paths from the resource root:
``Patient.name.given``, ``(Observation.value as Quantity)``,
``Observation.subject.where(resolve() is Patient)``. Such a path gives an
empty collection when the resource has no element under its first step
(FHIRPath N1 §5.1: navigation, ``where``, ``as``, ``ofType``, ``first`` and
``extension`` of an empty collection are empty). A resource holds ~10 of the
30-45 indexed elements of its type, so :func:`root_keys` lets the extractor
(:mod:`salus.fhir.search.extract`) skip every parameter whose first steps the
resource does not have, instead of evaluating it to nothing.

The analysis is deliberately narrow: an expression (each ``|`` branch) must
be such a path, and anything else (operators, ``exists()``, ``empty()``,
literals, ``%resource``, ...: an empty input can give a non-empty result)
makes it "always evaluate" (``None``). A branch that is the bare root
(``Observation``, a composite's root) needs the keys of its components (see
:func:`composite_keys`).
"""

from __future__ import annotations

from salus.fhir.search.fhirpath import Unsupported, _tokenize, split_union
from salus.fhir.search.resource_types import is_resource_type

__all__ = ["BARE", "key_matches", "root_keys"]

#: Marker in a :func:`root_keys` result: a branch is the bare root (the resource).
BARE = "."
#: Functions that give an empty collection for an empty input (and never read
#: anything but their input and their argument).
_EMPTY_PRESERVING = frozenset({"where", "as", "ofType", "first", "last", "extension", "single"})
_ROOT_NAMES = frozenset({"Resource", "DomainResource"})


def _branch_key(tokens: list[tuple[str, str]]) -> str | None:
    """The first step of a path branch; :data:`BARE` for the root alone;
    None when the branch is not a plain path (see the module docstring)."""
    pos = 0
    while pos < len(tokens) and tokens[pos] == ("op", "("):
        pos += 1
    if pos >= len(tokens) or tokens[pos][0] != "id":
        return None
    first = tokens[pos][1].strip("`")
    pos += 1
    key: str
    if first in _ROOT_NAMES or is_resource_type(first):
        if pos >= len(tokens) or tokens[pos] == ("op", ")"):
            key = BARE
        elif tokens[pos] == ("op", "."):
            pos += 1
            if pos >= len(tokens) or tokens[pos][0] != "id":
                return None
            key = tokens[pos][1].strip("`")
            pos += 1
        else:
            return None
    else:
        key = first
    if key != BARE and pos < len(tokens) and tokens[pos] == ("op", "("):
        if key != "extension":  # a function applied to the root
            return None
        pos = _skip_call(tokens, pos)
        if pos < 0:
            return None
    return key if _path_rest(tokens, pos) else None


def _skip_call(tokens: list[tuple[str, str]], pos: int) -> int:
    """The position after the ``)`` matching the ``(`` at ``pos`` (-1: none)."""
    depth = 0
    while pos < len(tokens):
        tok = tokens[pos]
        if tok[0] == "op" and tok[1] in ("(", "["):
            depth += 1
        elif tok[0] == "op" and tok[1] in (")", "]"):
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    return -1


def _path_rest(tokens: list[tuple[str, str]], pos: int) -> bool:
    """Whether the tokens from ``pos`` are only empty-preserving path steps."""
    while pos < len(tokens):
        kind, text = tokens[pos]
        if kind == "op" and text == ")":  # closing the branch's parentheses
            pos += 1
        elif kind == "op" and text == ".":
            if pos + 1 >= len(tokens) or tokens[pos + 1][0] != "id":
                return False
            pos += 2
            if pos < len(tokens) and tokens[pos] == ("op", "("):
                if tokens[pos - 1][1] not in _EMPTY_PRESERVING:
                    return False
                pos = _skip_call(tokens, pos)
                if pos < 0:
                    return False
        elif kind == "op" and text == "[":
            pos = _skip_call(tokens, pos)
            if pos < 0:
                return False
        elif kind == "id" and text == "as":
            if pos + 1 >= len(tokens) or tokens[pos + 1][0] != "id":
                return False
            pos += 2
            while (
                pos + 1 < len(tokens) and tokens[pos] == ("op", ".") and tokens[pos + 1][0] == "id"
            ):
                pos += 2  # FHIR.Quantity
        else:
            return False
    return True


def root_keys(expression: str) -> frozenset[str] | None:
    """The first steps of every branch of ``expression`` (may include
    :data:`BARE`); None when some branch is not a plain path."""
    keys: set[str] = set()
    for branch in split_union(expression):
        try:
            tokens = _tokenize(branch)
        except Unsupported:
            return None
        key = _branch_key(tokens)
        if key is None:
            return None
        keys.add(key)
    return frozenset(keys) if keys else None


def key_matches(json_key: str, step: str) -> bool:
    """Whether a resource's top-level JSON key may hold values of ``step``:
    the element itself, a choice type's ``stepType`` key, or a primitive's
    ``_step`` extension key (conservative: any key starting with ``step``)."""
    if json_key.startswith("_"):
        json_key = json_key[1:]
    return json_key.startswith(step)
