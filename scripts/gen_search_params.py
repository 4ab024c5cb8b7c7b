#!/usr/bin/env python3
"""Generate ``src/salus/fhir/definitions/search-parameters.json.gz``.

Reads the official FHIR R4 (4.0.1) SearchParameter Bundle
(``Bundle-searchParams.json`` from the npm package ``hl7.fhir.r4.examples``,
CC0; see FHIR R4 ``searchparameter.html``) and writes the fields the search
engine needs, one compact JSON object per SearchParameter, gzip-compressed.
The output is deterministic (sorted keys, no timestamp in the gzip header), so
regenerating from the same input gives the same bytes.

Usage::

    python scripts/gen_search_params.py [BUNDLE] [OUTPUT]

Defaults: ``../shared/corpora/fhir-r4-definitions/Bundle-searchParams.json``
(relative to the repository root) and the package data file above.

Besides the parameters, the output lists ``choice_elements``: the element
names that are FHIR choice types (``value[x]``, ``effective[x]`` ...) in some
search expression, derived from the XPath of the same definitions (which spell
out ``f:valueQuantity | f:valueCodeableConcept ...``). The extractor uses that
list to map ``Observation.value`` to the JSON keys ``valueQuantity`` etc.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = (
    ROOT.parent / "shared" / "corpora" / "fhir-r4-definitions" / "Bundle-searchParams.json"
)
DEFAULT_OUTPUT = ROOT / "src" / "salus" / "fhir" / "definitions" / "search-parameters.json.gz"

#: FHIR R4 data type names as they appear as choice-element suffixes (datatypes.html).
CHOICE_SUFFIXES = (
    "Base64Binary Boolean Canonical Code Date DateTime Decimal Id Instant Integer Markdown "
    "Oid PositiveInt String Time UnsignedInt Uri Url Uuid Address Age Annotation Attachment "
    "CodeableConcept Coding ContactPoint Count Distance Duration HumanName Identifier Money "
    "Period Quantity Range Ratio Reference SampledData Signature Timing ContactDetail "
    "Contributor DataRequirement Expression ParameterDefinition RelatedArtifact "
    "TriggerDefinition UsageContext Dosage Meta"
).split()


def compact(resource: dict[str, Any]) -> dict[str, Any]:
    """The fields of one SearchParameter that the registry keeps."""
    out: dict[str, Any] = {
        "url": resource["url"],
        "code": resource["code"],
        "base": list(resource["base"]),
        "type": resource["type"],
    }
    if resource.get("expression"):
        out["expression"] = resource["expression"]
    if resource.get("xpathUsage", "normal") != "normal":
        out["xpathUsage"] = resource["xpathUsage"]
    for key in ("target", "modifier", "comparator", "chain"):
        if resource.get(key):
            out[key] = list(resource[key])
    for key in ("multipleOr", "multipleAnd"):
        if key in resource:
            out[key] = bool(resource[key])
    if resource.get("component"):
        out["component"] = [
            {"definition": c["definition"], "expression": c["expression"]}
            for c in resource["component"]
        ]
    return out


def choice_elements(resources: list[dict[str, Any]]) -> list[str]:
    """Element names used as choice types in the expressions (from the XPath)."""
    names: set[str] = {"value"}  # extension('...').value, always a choice
    for res in resources:
        xpath = res.get("xpath") or ""
        steps = set(re.findall(r"\.([a-z][A-Za-z]*)", res.get("expression") or ""))
        tokens = set(re.findall(r"f:([a-z][A-Za-z]*)", xpath))
        for token in tokens:
            for suffix in CHOICE_SUFFIXES:
                stem = token[: -len(suffix)]
                if token.endswith(suffix) and stem in steps and stem not in tokens:
                    names.add(stem)
    return sorted(names)


def generate(bundle_path: Path) -> dict[str, Any]:
    bundle = json.loads(bundle_path.read_text(encoding="utf-8"))
    resources = [e["resource"] for e in bundle["entry"]]
    versions = {r.get("version") for r in resources}
    if versions != {"4.0.1"}:
        raise SystemExit(
            f"expected FHIR 4.0.1 definitions, found versions {sorted(map(str, versions))}"
        )
    params = sorted((compact(r) for r in resources), key=lambda p: p["url"])
    return {
        "fhirVersion": "4.0.1",
        "source": "hl7.fhir.r4.examples@4.0.1 Bundle-searchParams.json (CC0)",
        "choice_elements": choice_elements(resources),
        "params": params,
    }


def main(argv: list[str]) -> int:
    bundle = Path(argv[1]) if len(argv) > 1 else DEFAULT_BUNDLE
    output = Path(argv[2]) if len(argv) > 2 else DEFAULT_OUTPUT
    data = generate(bundle)
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    with (
        output.open("wb") as fh,
        gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=9, mtime=0) as gz,
    ):
        gz.write(raw.encode("utf-8"))
    print(
        f"{len(data['params'])} SearchParameters, {len(raw)} bytes of JSON, "
        f"{output.stat().st_size} bytes gzip -> {output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
