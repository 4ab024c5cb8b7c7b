"""Path resolution for FHIRPath Patch (FHIR R4 fhirpatch.html).

Patch operations need the *location* of the elements a path selects (their
container and key in the JSON tree), which a FHIRPath engine does not give;
this module resolves the subset of FHIRPath that patch paths use: dotted
paths (with or without the resource type), choice elements by base or full
name, ``[n]``, ``where(...)`` (criteria evaluated by fhirpathpy with the R4
model), ``first()``, ``last()``, ``single()``, ``ofType()``/``as()`` and
``extension('url')``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, cast

from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as fhirpath_models

from salus.fhir import model

_ABSTRACT = ("Resource", "DomainResource")
_R4 = fhirpath_models["r4"]
_Compiled = Callable[[Any, Mapping[str, Any]], list[Any]]
_typed_node = cast(Callable[[Any, str | None], Any], ResourceNode.create_node)


class PatchFailure(Exception):
    """Why one FHIRPath Patch operation cannot be applied (becomes a 422)."""


_Failure = PatchFailure

_TOKEN = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_]\w*|`[^`]+`)(?P<call>\()?|(?P<dot>\.)|\[\s*(?P<index>\d+)\s*\])"
)
_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|`[^`]*`|[()]")
_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")
_FUNCTIONS = ("where", "first", "last", "single", "ofType", "as", "extension")


def _parse_path(text: str) -> list[tuple[str, str]]:
    """Steps: ("name", member), ("index", digits) or (function, argument text)."""
    steps: list[tuple[str, str]] = []
    pos, after_dot = 0, True
    while pos < len(text.rstrip()):
        match = _TOKEN.match(text, pos)
        if match is None or bool(match["name"]) != after_dot:
            raise _Failure("the path is not a supported FHIRPath expression.")
        pos, after_dot = match.end(), bool(match["dot"])
        if match["index"] is not None:
            steps.append(("index", match["index"]))
        elif match["name"] and not match["call"]:
            steps.append(("name", match["name"].strip("`")))
        elif match["name"]:
            if match["name"] not in _FUNCTIONS:
                raise _Failure(f"the function {match['name']}() is not supported in patch paths.")
            depth, end = 1, None
            for token in _LITERAL.finditer(text, pos):  # the closing parenthesis
                depth += {"(": 1, ")": -1}.get(token.group(), 0)
                if depth == 0:
                    end = token.start()
                    break
            if end is None:
                raise _Failure("the path has unbalanced parentheses or quotes.")
            steps.append((match["name"], text[pos:end].strip()))
            pos = end + 1
    if after_dot:
        raise _Failure("the path is empty or ends with a dot.")
    return steps


@dataclass(eq=False, slots=True)
class _Node:
    """An element a path found: where it is in the JSON tree, and its type.

    Its value is ``holder[key]`` (or ``holder[key][index]``); a primitive's id
    and extensions are ``holder["_" + key]`` (``json.html#primitive``). The
    resource itself has ``key`` None.
    """

    holder: dict[str, Any]
    key: str | None
    index: int | None
    type: str | None  # a type of the model; None where unknown
    element: model.ElementDef | None
    up: _Node | None

    def _get(self, key: str) -> Any:
        item = self.holder.get(key)
        if self.index is None:
            return item
        return item[self.index] if isinstance(item, list) and self.index < len(item) else None

    @property
    def value(self) -> Any:
        return self.holder if self.key is None else self._get(self.key)

    @property
    def ext(self) -> Any:
        return None if self.key is None else self._get("_" + self.key)

    @property
    def primitive(self) -> bool:
        return model.primitive(self.type or "") is not None


def _type_def(name: str | None) -> model.TypeDef | None:
    return model.type_def(name) if name is not None and model.has_type(name) else None


def _element(td: model.TypeDef | None, name: str) -> model.ElementDef | None:
    """An element by name, choice base name (``value``) or JSON name (``valueQuantity``)."""
    if td is None:
        return None
    found = td.elements.get(name) or td.elements.get(name + "[x]")
    return found or next((e for e in td.elements.values() if name in e.json_names()), None)


def _children(node: _Node, name: str) -> list[_Node]:
    holder, td = (node.ext, _type_def("Element")) if node.primitive else (node.value, None)
    td = td or _type_def(node.type)
    element = _element(td, name)
    if not isinstance(holder, dict) or (td is not None and element is None):
        return []
    names = element.json_names() if element is not None else {name: None}
    keys = [name] if name in names else [k for k in names if k in holder or "_" + k in holder]
    found: list[_Node] = []
    for key in keys:
        values, exts = holder.get(key), holder.get("_" + key)
        if isinstance(values, list) or isinstance(exts, list):
            items = [value for value, _ in _pairs(holder, key)]
            indexes: list[int | None] = list(range(len(items)))
        else:
            items, indexes = [values], [None] if values is not None or exts is not None else []
        for index in indexes:
            item = items[index or 0]
            code = names[key]
            if code == "Resource" and isinstance(item, dict):  # contained, Bundle.entry.resource
                code = str(item.get("resourceType"))
            found.append(_Node(holder, key, index, code, element, node))
    return found


def _is_type(node: _Node, name: str) -> bool:
    name = name.strip("` ").removeprefix("FHIR.")
    abstract = name in _ABSTRACT and isinstance(node.value, dict)
    return node.type == name or (abstract and model.is_resource_type(node.type or ""))


def _call(nodes: list[_Node], function: str, arg: str, resource: dict[str, Any]) -> list[_Node]:
    if function in ("first", "last", "single") and arg:
        raise _Failure(f"{function}() takes no arguments.")
    if function == "single" and len(nodes) > 1:
        raise _Failure("single() found more than one element.")
    if function in ("first", "last", "single"):
        return nodes[-1:] if function == "last" else nodes[:1]
    if function in ("ofType", "as"):
        return [node for node in nodes if _is_type(node, arg)]
    if function == "extension":
        match = _STRING.fullmatch(arg)
        if match is None:
            raise _Failure("extension() takes a URL as a string literal.")
        url = re.sub(r"\\(.)", r"\1", match.group(1))
        found = [child for node in nodes for child in _children(node, "extension")]
        return [c for c in found if isinstance(c.value, dict) and c.value.get("url") == url]
    try:  # where(): any FHIRPath, evaluated by fhirpathpy on each candidate
        test = cast(_Compiled, fhirpath_compile(arg, _R4))
        context = {"resource": resource, "rootResource": resource}
        typed = [_typed_node(n.value, n.type) if _type_def(n.type) else n.value for n in nodes]
        return [
            node for node, data in zip(nodes, typed, strict=True) if test(data, context) == [True]
        ]
    except Exception:  # fhirpathpy raises many kinds, for syntax and evaluation alike
        raise _Failure("the where() criteria could not be evaluated.") from None


def _resolve(resource: dict[str, Any], steps: list[tuple[str, str]]) -> list[_Node]:
    kind = resource.get("resourceType")
    nodes = [_Node(resource, None, None, kind if isinstance(kind, str) else None, None, None)]
    for position, (step, arg) in enumerate(steps):
        if step == "index":
            nodes = nodes[int(arg) : int(arg) + 1]
        elif step != "name":
            nodes = _call(nodes, step, arg, resource)
        elif position == 0 and (model.is_resource_type(arg) or arg in _ABSTRACT):
            nodes = [node for node in nodes if _is_type(node, arg)]
        else:
            nodes = [child for node in nodes for child in _children(node, arg)]
    return nodes


def _single(resource: dict[str, Any], path: str) -> _Node:
    nodes = _resolve(resource, _parse_path(path))
    if len(nodes) != 1:
        count = f"{len(nodes)} elements" if nodes else "no element"
        raise _Failure(f"the path matches {count}; it must match exactly one.")
    return nodes[0]


def _pairs(holder: dict[str, Any], key: str) -> list[tuple[Any, Any]]:
    """A repeating element as (value, ``_name`` object) pairs (``json.html#primitive``)."""
    values, exts = (holder.get(name) for name in (key, "_" + key))
    values, exts = (v if isinstance(v, list) else [] for v in (values, exts))
    return list(zip_longest(values, exts))
