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
``_plan_keys`` in :mod:`salus.fhir.search.extract`).

A first step cast at once to a type (``Observation.value as Quantity``,
``value.as(CodeableConcept)``, ``.ofType(T)``) reads only the JSON keys of
that type and the bare element (the evaluator's
:func:`~salus.fhir.search.fhirpath_ops.typed_children`), so its keys are those:
``valueQuantity``, ``valueAge``, ... and ``=value``, the bare key matched
exactly (:data:`EXACT`). An Observation with ``valueQuantity`` then skips the
``value-concept``, ``value-string`` and ``value-date`` parameters and their
composites.
"""

from __future__ import annotations

from salus.fhir.search.fhirpath import Unsupported, _tokenize, split_union
from salus.fhir.search.fhirpath_ops import type_keys
from salus.fhir.search.resource_types import is_resource_type

__all__ = ["BARE", "EXACT", "key_matches", "root_keys"]

#: Marker in a :func:`root_keys` result: a branch is the bare root (the resource).
BARE = "."
#: Prefix of a :func:`root_keys` key that matches only that JSON key (and its
#: ``_`` twin), not the keys it begins.
EXACT = "="
#: Functions that give an empty collection for an empty input (and never read
#: anything but their input and their argument).
_EMPTY_PRESERVING = frozenset({"where", "as", "ofType", "first", "last", "extension", "single"})
_ROOT_NAMES = frozenset({"Resource", "DomainResource"})


def _branch_keys(tokens: list[tuple[str, str]]) -> tuple[str, ...] | None:
    """The keys of a path branch: its first step, or the keys of the type
    that step is cast to at once; ``(BARE,)`` for the root alone; None when
    the branch is not a plain path (see the module docstring)."""
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
    if not _path_rest(tokens, pos):
        return None
    if key == BARE:
        return (BARE,)
    cast = _cast_type(tokens, pos)
    if cast is None:
        return (key,)
    return (*type_keys(key, cast), EXACT + key)


def _cast_type(tokens: list[tuple[str, str]], pos: int) -> str | None:
    """The type named by ``as T``, ``.as(T)`` or ``.ofType(T)`` at ``pos``
    (the step right after the first), or None."""
    if pos < len(tokens) and tokens[pos] == ("id", "as"):
        pos += 1
    elif (
        pos + 2 < len(tokens)
        and tokens[pos] == ("op", ".")
        and tokens[pos + 1] in (("id", "as"), ("id", "ofType"))
        and tokens[pos + 2] == ("op", "(")
    ):
        pos += 3
    else:
        return None
    found = _type_name(tokens, pos)
    return None if found is None else found[0]


def _type_name(tokens: list[tuple[str, str]], pos: int) -> tuple[str, int] | None:
    """The type name at ``pos`` (its last part: ``FHIR.Quantity`` is
    ``Quantity``, as the compiler reads it) and the position after it; None
    when no name is there."""
    if pos >= len(tokens) or tokens[pos][0] != "id":
        return None
    name = tokens[pos][1].strip("`")
    pos += 1
    while pos + 1 < len(tokens) and tokens[pos] == ("op", ".") and tokens[pos + 1][0] == "id":
        name = tokens[pos + 1][1].strip("`")
        pos += 2
    return name, pos


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
            found = _type_name(tokens, pos + 1)
            if found is None:
                return False
            pos = found[1]
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
        found = _branch_keys(tokens)
        if found is None:
            return None
        keys.update(found)
    return frozenset(keys) if keys else None


def key_matches(json_key: str, step: str) -> bool:
    """Whether a resource's top-level JSON key may hold values of ``step``:
    the element itself, a choice type's ``stepType`` key, or a primitive's
    ``_step`` extension key (conservative: any key starting with ``step``).
    An :data:`EXACT` step matches its own key alone."""
    if json_key.startswith("_"):
        json_key = json_key[1:]
    if step.startswith(EXACT):
        return json_key == step[1:]
    return json_key.startswith(step)
