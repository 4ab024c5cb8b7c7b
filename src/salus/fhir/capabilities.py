"""The CapabilityStatement (FHIR R4 capabilitystatement.html), generated from
what the server really supports: the resource types the model knows, the
interactions the router serves and every search parameter of the registry
whose type the search engine implements."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from salus import __version__

__all__ = ["capability_statement"]

INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
SEARCH_TYPES = frozenset(
    {"number", "date", "string", "token", "reference", "quantity", "uri", "composite"}
)


@lru_cache(maxsize=4)
def _rest_resources(registry: Any) -> tuple[dict[str, Any], ...]:
    resources = []
    for res_type in sorted(registry.resource_types()):
        params = [
            {
                "name": code,
                "type": param.type,
                **({"definition": param.url} if getattr(param, "url", None) else {}),
            }
            for code, param in sorted(registry.params_for(res_type).items())
            if param.type in SEARCH_TYPES
        ]
        resources.append(
            {
                "type": res_type,
                "interaction": [{"code": code} for code in INTERACTIONS],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": False,
                "conditionalUpdate": False,
                "conditionalDelete": "not-supported",
                "searchInclude": ["*"],
                "searchRevInclude": ["*"],
                "searchParam": params,
            }
        )
    return tuple(resources)


def capability_statement(registry: Any, base_url: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": {"name": "Salus", "version": __version__},
        "implementation": {"description": "Salus health data hub", "url": f"{base_url}/fhir"},
        "fhirVersion": "4.0.1",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [{"url": "token", "valueUri": f"{base_url}/auth/token"}],
                        }
                    ],
                },
                "resource": list(_rest_resources(registry)),
                "interaction": [
                    {"code": "history-system"},
                    {"code": "transaction"},
                    {"code": "batch"},
                ],
                "operation": [
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                    },
                    {
                        "name": "everything",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    },
                    {
                        "name": "validate",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                    },
                    {
                        "name": "meta",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Resource-meta",
                    },
                    {
                        # Bulk Data Import (draft IG): NDJSON in the body or uploaded
                        # with $import-file; asynchronous (Prefer: respond-async).
                        "name": "import",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/import",
                    },
                    {  # SQL on FHIR v2 (also on ViewDefinition as $run / $export)
                        "name": "viewdefinition-run",
                        "definition": "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-run",
                    },
                    {
                        "name": "viewdefinition-export",
                        "definition": "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-export",
                    },
                ],
            }
        ],
    }
