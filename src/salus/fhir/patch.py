"""The FHIR R4 ``patch`` interaction, free of HTTP (FHIR R4 ``http.html#patch``).

:func:`apply_patch` takes the current resource, the request body and its
content type and returns a *new* patched resource (the input is never changed):

* ``application/json-patch+json``: JSON Patch (RFC 6902) with the ``jsonpatch``
  library, one operation at a time, ``test`` included;
* ``application/fhir+json`` (or ``application/json``): FHIRPath Patch, a
  ``Parameters`` resource of ``operation`` parameters (R4 ``fhirpatch.html``):
  ``add``, ``insert``, ``delete``, ``replace`` and ``move``.

Other types (XML Patch, FHIR XML) are 415 (:class:`UnsupportedMediaType`); a
body that is not JSON, or not an array (JSON Patch) or a ``Parameters``
resource (FHIRPath Patch), is 400 (:class:`InvalidInput`). An operation that
cannot be applied (a failed ``test``, a path that does not resolve, a value of
the wrong type, a change of ``resourceType`` or ``id``) is 422
(:class:`UnprocessableContent`) whose expression names it: ``patch[2]`` or
``Parameters.parameter[2]``. Messages never repeat values of the resource.

FHIRPath paths are resolved here because a patch needs each element's
*location* (JSON object, property, array index), which fhirpathpy does not
report. Supported: an optional leading resource type, member navigation (a
choice element by its base name, ``Observation.value``, or JSON name,
``valueQuantity``; a primitive's ``id``/``extension``), indexers ``[n]`` and
``where(criteria)``, ``first()``, ``last()``, ``single()``, ``ofType(T)``,
``as(T)``, ``extension('url')``. ``where`` criteria are any FHIRPath, evaluated
by fhirpathpy (R4 model) on each candidate. Anything else (``resolve()``,
operators) is 422.

Rules (R4 ``fhirpatch.html``): paths match exactly one element, except for
``delete`` (nothing found: no-op); ``add`` appends to a repeating element and
sets a non-repeating one only where absent; ``insert``/``move`` act within one
list, 0-based; the value's type must fit the element (primitives with the same
JSON form, and the Quantity profiles, are interchangeable); complex and
anonymous values may be given as nested ``part``s. Objects a ``delete`` leaves
empty are removed (``ele-1``). The result is not validated here: callers
validate it as for an update (``salus.fhir.validate``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import jsonpatch
import jsonpointer

from salus import jsoncodec
from salus.errors import InvalidInput, UnprocessableContent, UnsupportedMediaType
from salus.fhir import model
from salus.fhir.patchpath import (
    PatchFailure,
    _element,
    _Node,
    _pairs,
    _parse_path,
    _resolve,
    _single,
    _type_def,
)

__all__ = [
    "FHIRPATH_PATCH_TYPES",
    "JSON_PATCH",
    "PATCH_MEDIA_TYPES",
    "apply_fhirpath_patch",
    "apply_json_patch",
    "apply_patch",
]

#: JSON Patch (RFC 6902), ``http.html#patch``.
JSON_PATCH = "application/json-patch+json"
#: Media types of a FHIRPath Patch body (``application/json+fhir``: the DSTU2 name).
FHIRPATH_PATCH_TYPES = frozenset(
    {"application/fhir+json", "application/json", "application/json+fhir"}
)
#: Every media type :func:`apply_patch` accepts.
PATCH_MEDIA_TYPES = FHIRPATH_PATCH_TYPES | {JSON_PATCH}

_PROTECTED = ("resourceType", "id")
_ABSTRACT = ("Resource", "DomainResource")
_T = TypeVar("_T", str, int)
_ABSENT = object()
_QUANTITIES = frozenset("Quantity Age Count Distance Duration SimpleQuantity MoneyQuantity".split())
_Element = model.ElementDef | None


def apply_patch(resource: Mapping[str, Any], body: bytes, content_type: str) -> dict[str, Any]:
    """Apply a PATCH body to ``resource`` and return the patched copy (``http.html#patch``).

    ``content_type`` is the request's Content-Type (parameters allowed; a
    ``charset`` must be UTF-8). Raises :class:`UnsupportedMediaType` (415),
    :class:`InvalidInput` (400) or :class:`UnprocessableContent` (422).
    """
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip(' "').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType("PATCH bodies must be UTF-8.")
    if media != JSON_PATCH and media not in FHIRPATH_PATCH_TYPES:
        raise UnsupportedMediaType(
            "PATCH takes JSON Patch (application/json-patch+json) or a FHIRPath Patch "
            "Parameters resource (application/fhir+json); XML Patch and XML are not supported."
        )
    if not body:
        raise InvalidInput("The PATCH request has no body.")
    try:
        document = jsoncodec.loads(body.decode("utf-8"), strict=True)
    except ValueError:  # UnicodeDecodeError is one too
        raise InvalidInput("The PATCH body is not valid JSON.") from None
    if media == JSON_PATCH:
        if not isinstance(document, list):
            raise InvalidInput("A JSON Patch body must be a JSON array of operations (RFC 6902).")
        return apply_json_patch(resource, document)
    if isinstance(document, list):
        raise InvalidInput("A JSON array is a JSON Patch: send it as application/json-patch+json.")
    if not isinstance(document, dict):
        raise InvalidInput("A FHIRPath Patch body must be a Parameters resource (fhirpatch.html).")
    return apply_fhirpath_patch(resource, document)


def _fail(where: str, message: str) -> UnprocessableContent:
    return UnprocessableContent(f"{where}: {message}", expression=[where])


def _check_identity(before: Mapping[str, Any], after: Any, where: str) -> None:
    """``resourceType`` and ``id`` never change: a patch edits *this* resource."""
    if not isinstance(after, dict):
        raise _fail(where, "the result must be a resource (a JSON object).")
    for key in _PROTECTED:
        if before.get(key, _ABSENT) != after.get(key, _ABSENT):
            raise _fail(where, f"{key} cannot be changed by a patch.")


# --- JSON Patch (RFC 6902) --------------------------------------------------------

_JSON_PATCH_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jsonpatch.JsonPatchTestFailed, "the test failed: the value there differs from the one given"),
    (jsonpatch.JsonPatchPathNotFound, "nothing exists at that location"),
    (jsonpatch.JsonPatchConflict, "the operation conflicts with the document there"),
    (jsonpointer.JsonPointerException, "the path does not resolve in the document"),
)


def apply_json_patch(resource: Mapping[str, Any], operations: list[Any]) -> dict[str, Any]:
    """Apply parsed JSON Patch ``operations`` (RFC 6902) to a copy of ``resource``.

    In order, all or nothing (``http.html#patch``); a failure names ``patch[i]``.
    """
    document: Any = copy.deepcopy(dict(resource))
    for index, operation in enumerate(operations):
        where, label = f"patch[{index}]", "operation"
        if isinstance(operation, Mapping):
            op, path = operation.get("op"), operation.get("path")
            label = op[:20] if isinstance(op, str) else label
            label += f" at {path[:200]!r}" if isinstance(path, str) else ""
            members = {"test": (), "copy": ("path",), "move": ("path", "from")}
            for member in members.get(str(op), ("path",)):  # refuse /id and /resourceType
                head = _pointer_head(operation.get(member))
                if head in _PROTECTED:
                    raise _fail(where, f"{head} cannot be changed by a patch.")
        try:
            document = jsonpatch.JsonPatch([operation]).apply(document, in_place=True)
        except jsonpatch.InvalidJsonPatch as exc:
            raise _fail(where, f"invalid operation: {str(exc)[:200]}.") from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            reason = next(text for kind, text in _JSON_PATCH_REASONS if isinstance(exc, kind))
            raise _fail(where, f"{label}: {reason}.") from None
        except (TypeError, ValueError, LookupError, RecursionError):
            raise _fail(where, f"{label}: the operation cannot be applied.") from None
        _check_identity(resource, document, where)
    result: dict[str, Any] = document
    return result


def _pointer_head(pointer: Any) -> str | None:
    """The first token of a JSON Pointer (None: root or invalid, which jsonpatch reports)."""
    try:
        parts = jsonpointer.JsonPointer(pointer).parts if isinstance(pointer, str) else []
    except jsonpointer.JsonPointerException:
        return None
    return str(parts[0]) if parts else None


# --- FHIRPath Patch: the Parameters ---------------------------------------------------


_Failure = PatchFailure


@dataclass(frozen=True, slots=True)
class _Value:
    """A value: JSON, ``_name`` object (primitive id/extension) and type; or parts."""

    json: Any = None
    ext: Any = None
    code: str | None = None
    parts: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class _Operation:
    type: str
    path: str
    name: str | None
    value: _Value | None
    index: int | None
    source: int | None
    destination: int | None


_NEEDS = {"add": ("name", "value"), "insert": ("value", "index"), "replace": ("value",)}
_NEEDS |= {"delete": (), "move": ("source", "destination")}


def _read_operation(parameter: Any) -> _Operation:
    if not isinstance(parameter, dict) or parameter.get("name") != "operation":
        raise _Failure("each parameter must be named 'operation' (fhirpatch.html).")
    if not isinstance(parameter.get("part"), list):
        raise _Failure("the operation has no parts.")
    fields: dict[str, dict[str, Any]] = {}
    for part in parameter["part"]:
        name = part.get("name") if isinstance(part, dict) else None
        if name not in ("type", "path", "name", "value", "index", "source", "destination"):
            raise _Failure("parts must be type, path, name, value, index, source or destination.")
        if name in fields:
            raise _Failure(f"the part {name} is given twice.")
        fields[name] = part
    kind, path, name = (_part(fields, n, str) for n in ("type", "path", "name"))
    numbers = [_part(fields, n, int) for n in ("index", "source", "destination")]
    if kind not in _NEEDS:
        raise _Failure("the type must be add, insert, delete, replace or move.")
    if path is None:
        raise _Failure("the path is missing.")
    value = _read_value(fields["value"]) if "value" in fields else None
    op = _Operation(kind, path, name, value, *numbers)
    for field in _NEEDS[kind]:
        if getattr(op, field) is None:
            raise _Failure(f"{kind} needs the part {field}.")
    return op


def _part(fields: Mapping[str, Mapping[str, Any]], name: str, kind: type[_T]) -> _T | None:
    """A part's valueString/valueCode (``kind`` str) or valueInteger (int); None if absent."""
    if name not in fields:
        return None
    keys = ("valueString", "valueCode") if kind is str else ("valueInteger", "valueUnsignedInt")
    for key in keys:
        item = fields[name].get(key)
        if isinstance(item, kind) and not isinstance(item, bool) and item != "":
            return item
    raise _Failure(f"the part {name} must have a {keys[0]}.")


def _read_value(part: Mapping[str, Any]) -> _Value:
    """The value of a ``part``: one value[x] (with its ``_value[x]``), a resource, or parts."""
    names = model.type_def("Parameters.parameter").elements["value[x]"].json_names()
    found = {key.lstrip("_") for key in part if key.lstrip("_") in names}
    if len(found) + ("resource" in part) + ("part" in part) != 1:
        raise _Failure("the value must be one value[x], a resource or parts.")
    if "resource" in part:
        resource = part["resource"]
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise _Failure("the value's resource has no resourceType.")
        return _Value(json=copy.deepcopy(resource), code=resource["resourceType"])
    if found:
        key = found.pop()
        value, ext = copy.deepcopy(part.get(key)), copy.deepcopy(part.get("_" + key))
        if (value is None and ext is None) or not isinstance(ext, dict | None):
            raise _Failure(f"{key} has no value, or _{key} is not an object.")
        return _Value(json=value, ext=ext, code=names[key])
    if not isinstance(part["part"], list) or not part["part"]:
        raise _Failure("the value has no value[x] and no parts.")
    return _Value(parts=part["part"])


# --- FHIRPath Patch: values -------------------------------------------------------------


def _materialize(value: _Value, element: model.ElementDef | None) -> _Value:
    """The value to store at ``element``: type-checked; nested parts built into an object."""
    if value.parts is None:
        _check_type(element, value.code)
        return value
    code = element.types[0] if element is not None and len(element.types) == 1 else None
    if code is not None and (model.primitive(code) is not None or code == "Resource"):
        raise _Failure(f"{code} values cannot be given as parts.")
    built: dict[str, Any] = {}
    td = _type_def(code)
    for part in value.parts:
        name = part.get("name") if isinstance(part, dict) else None
        child = _element(td, name) if isinstance(name, str) else None
        if not isinstance(name, str) or (td is not None and child is None):
            raise _Failure(f"{code or 'the value'} has no element of that part's name.")
        item = _materialize(_read_value(part), child)
        key = _json_key(child, name, item.code)
        if child is not None and child.is_array:
            _set(built, key, len(_pairs(built, key)), item.json, item.ext, insert=True)
        elif key in built:
            raise _Failure(f"the part {name[:64]} is given twice.")
        else:
            _set(built, key, None, item.json, item.ext)
    return _Value(json=built, code=code)


def _check_type(element: model.ElementDef | None, code: str | None) -> None:
    """The value's type must fit the element (``fhirpatch.html``: SHALL return an error)."""
    if element is None or code is None or code in element.types:
        return
    if "Resource" in element.types and model.is_resource_type(code):
        return
    given = model.primitive(code)
    if given is not None and not element.is_choice:
        kinds = {prim.json for t in element.types if (prim := model.primitive(t)) is not None}
        if given.json in kinds or (given.json == "integer" and "decimal" in kinds):
            return
    if code in _QUANTITIES and _QUANTITIES.intersection(element.types):
        return
    raise _Failure(f"a {code} value does not fit {element.path}.")


def _json_key(element: model.ElementDef | None, name: str, code: str | None) -> str:
    """The JSON property of ``name``; a choice element's depends on the value's type."""
    if element is None or not element.is_choice:
        return name if element is None else element.name
    names = element.json_names()
    key = name if name in names else next((k for k, c in names.items() if c == code), None)
    if key is None or (code is not None and names[key] != code):
        raise _Failure(f"the value's type is not allowed for {element.path}.")
    return key


# --- FHIRPath Patch: editing the JSON tree ------------------------------------------


def _write(holder: dict[str, Any], key: str, pairs: list[tuple[Any, Any]]) -> None:
    """Store a repeating element's pairs; a list left empty, or all null, goes."""
    for position, name in enumerate((key, "_" + key)):
        items = [pair[position] for pair in pairs]
        if any(item is not None for item in items):
            holder[name] = items
        else:
            holder.pop(name, None)


def _set(
    holder: dict[str, Any], key: str, index: int | None, value: Any, ext: Any, insert: bool = False
) -> None:
    """Set an element's value and ``_name`` object (None clears), or insert them at ``index``."""
    if index is None:
        for name, item in ((key, value), ("_" + key, ext)):
            if item is None:
                holder.pop(name, None)
            else:
                holder[name] = item
        return
    pairs = _pairs(holder, key)
    pairs[index : index + (not insert)] = [(value, ext)]
    _write(holder, key, pairs)


def _remove(node: _Node) -> None:
    """Delete an element, then the objects that leaves empty, up to the resource (``ele-1``)."""
    while node.up is not None and node.key is not None:
        if node.index is None:
            _set(node.holder, node.key, None, None, None)
        else:
            pairs = _pairs(node.holder, node.key)
            del pairs[node.index]
            _write(node.holder, node.key, pairs)
        node = node.up
        if node.primitive and node.ext == {}:  # its last extension went: drop _name
            if node.value is not None:
                return _set(node.holder, str(node.key), node.index, node.value, None)
        elif node.value != {}:
            return None
    return None


def _protect(node: _Node) -> None:
    if node.up is None:
        raise _Failure("the resource itself cannot be the target.")
    if node.up.up is None and node.key in _PROTECTED:
        raise _Failure(f"{node.key} cannot be changed by a patch.")


def _container(node: _Node) -> tuple[dict[str, Any], model.TypeDef | None]:
    """The JSON object that new children of ``node`` go into (a primitive's ``_name``)."""
    if not node.primitive:
        if not isinstance(node.value, dict):
            raise _Failure("the path does not select an element that can have children.")
        return node.value, _type_def(node.type)
    if not isinstance(node.ext, dict):
        _set(node.holder, str(node.key), node.index, node.value, {})
    ext: dict[str, Any] = node.ext
    return ext, _type_def("Element")


def _list(resource: dict[str, Any], path: str) -> tuple[dict[str, Any], str, _Element]:
    """The one list that ``path`` names (insert, move): its holder, key and element."""
    steps = _parse_path(path)
    nodes = _resolve(resource, steps)
    if nodes:
        first = nodes[0]
        if first.key is None or first.index is None:
            raise _Failure("the path does not select a repeating element.")
        if any(node.holder is not first.holder or node.key != first.key for node in nodes):
            raise _Failure("the path matches elements of more than one list.")
        return first.holder, first.key, first.element
    if steps[-1][0] == "name" and len(steps) > 1:  # an absent list: its parent must exist
        parents = _resolve(resource, steps[:-1])
        holder, td = _container(parents[0]) if len(parents) == 1 else ({}, None)
        element = _element(td, steps[-1][1])
        if element is not None and element.is_array:
            return holder, element.name, element
    raise _Failure("the path matches no list.")


def _add(resource: dict[str, Any], op: _Operation) -> None:
    assert op.name is not None and op.value is not None  # noqa: S101 - _NEEDS checked it
    target = _single(resource, op.path)
    if target.up is None and op.name in _PROTECTED:
        raise _Failure(f"{op.name} cannot be changed by a patch.")
    holder, td = _container(target)
    element = _element(td, op.name)
    if td is not None and element is None:
        raise _Failure(f"{td.name} has no element {op.name[:64]}.")
    value = _materialize(op.value, element)
    key = _json_key(element, op.name, value.code)
    if element.is_array if element is not None else isinstance(holder.get(key), list):
        return _set(holder, key, len(_pairs(holder, key)), value.json, value.ext, insert=True)
    names = element.json_names() if element is not None else [key]
    if any(name in holder or "_" + name in holder for name in names):
        raise _Failure(f"{op.name[:64]} is already there and does not repeat: use replace.")
    return _set(holder, key, None, value.json, value.ext)


def _insert(resource: dict[str, Any], op: _Operation) -> None:
    assert op.value is not None and op.index is not None  # noqa: S101 - _NEEDS checked it
    holder, key, element = _list(resource, op.path)
    length = len(_pairs(holder, key))
    if not 0 <= op.index <= length:
        raise _Failure(f"the index must be between 0 and {length}, the length of the list.")
    value = _materialize(op.value, element)
    _set(holder, key, op.index, value.json, value.ext, insert=True)


def _delete(resource: dict[str, Any], op: _Operation) -> None:
    nodes = _resolve(resource, _parse_path(op.path))
    if len(nodes) > 1:
        raise _Failure(f"the path matches {len(nodes)} elements; delete removes only one.")
    for node in nodes:  # none found: nothing to do (fhirpatch.html: "if found")
        _protect(node)
        _remove(node)


def _replace(resource: dict[str, Any], op: _Operation) -> None:
    assert op.value is not None  # noqa: S101 - _NEEDS checked it
    node = _single(resource, op.path)
    _protect(node)
    value = _materialize(op.value, node.element)
    key = str(node.key)
    if node.element is not None and node.element.is_choice:  # valueQuantity -> valueString
        key = _json_key(node.element, node.element.name[:-3], value.code)
        if key != node.key:
            _set(node.holder, str(node.key), None, None, None)
    _set(node.holder, key, node.index, value.json, value.ext)


def _move(resource: dict[str, Any], op: _Operation) -> None:
    assert op.source is not None and op.destination is not None  # noqa: S101 - _NEEDS
    holder, key, _ = _list(resource, op.path)
    pairs = _pairs(holder, key)
    for name, number in (("source", op.source), ("destination", op.destination)):
        if not 0 <= number < len(pairs):
            raise _Failure(f"the {name} must be between 0 and {len(pairs) - 1}.")
    pairs.insert(op.destination, pairs.pop(op.source))
    _write(holder, key, pairs)


_APPLY = {"add": _add, "insert": _insert, "delete": _delete, "replace": _replace, "move": _move}


def apply_fhirpath_patch(
    resource: Mapping[str, Any], parameters: Mapping[str, Any]
) -> dict[str, Any]:
    """Apply a FHIRPath Patch ``Parameters`` resource (R4 ``fhirpatch.html``) to a copy.

    In order, all or nothing; a failure names ``Parameters.parameter[i]``.
    """
    operations = parameters.get("parameter", [])
    if parameters.get("resourceType") != "Parameters" or not isinstance(operations, list):
        raise InvalidInput("A FHIRPath Patch must be a Parameters resource (fhirpatch.html).")
    if not isinstance(resource.get("resourceType"), str):
        raise UnprocessableContent("Only a resource (with a resourceType) can be patched.")
    document = copy.deepcopy(dict(resource))
    for index, parameter in enumerate(operations):
        where, label = f"Parameters.parameter[{index}]", "operation"
        try:
            operation = _read_operation(parameter)
            label = operation.type
            _APPLY[operation.type](document, operation)
        except _Failure as exc:
            raise _fail(where, f"{label}: {exc}") from None
        except RecursionError:
            raise _fail(where, f"{label}: the value is nested too deeply.") from None
        _check_identity(resource, document, where)
    return document
