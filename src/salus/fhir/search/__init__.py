"""FHIR R4 search: the parameter registry and index value extraction.

Driven by the official R4 SearchParameter definitions (FHIR R4
``searchparameter.html``), one index value kind per parameter type (FHIR R4
``search.html`` §3.1.1). The SQL tables and the query side live elsewhere and
use this API.
"""

from salus.fhir.search.extract import (
    CompileReport,
    Extractor,
    extract,
    get_extractor,
    patient_compartment,
    patient_compartments,
)
from salus.fhir.search.fhirpath import CompiledExpression, compile_expression
from salus.fhir.search.registry import (
    ParamType,
    SearchParam,
    SearchParamComponent,
    SearchRegistry,
    get_registry,
)
from salus.fhir.search.values import (
    DATE_MAX,
    DATE_MIN,
    NUMBER_MAX,
    NUMBER_MIN,
    CompositeValue,
    DateValue,
    IndexValue,
    NumberValue,
    QuantityValue,
    ReferenceIdentifierValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    date_interval,
    decimal_range,
    normalize_string,
    parse_reference,
)

__all__ = [
    "DATE_MAX",
    "DATE_MIN",
    "NUMBER_MAX",
    "NUMBER_MIN",
    "CompileReport",
    "CompiledExpression",
    "CompositeValue",
    "DateValue",
    "Extractor",
    "IndexValue",
    "NumberValue",
    "ParamType",
    "QuantityValue",
    "ReferenceIdentifierValue",
    "ReferenceValue",
    "SearchParam",
    "SearchParamComponent",
    "SearchRegistry",
    "StringValue",
    "TokenValue",
    "UriValue",
    "compile_expression",
    "date_interval",
    "decimal_range",
    "extract",
    "get_extractor",
    "get_registry",
    "normalize_string",
    "parse_reference",
    "patient_compartment",
    "patient_compartments",
]
