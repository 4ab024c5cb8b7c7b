"""Conditional interactions (FHIR R4 http.html#ccreate, #cond-update, #cdelete).

A condition is a search under the caller's own policy filter, run inside the
write transaction: it never matches, and so never reveals, a resource the
caller may not see. The router decides and opens the transaction; the
functions here do the matching and the write inside it. Transaction Bundles
(:mod:`salus.fhir.bundle`) match their ``ifNoneExist`` and conditional
references with the same matcher.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import text

from salus.errors import InvalidInput, NotFound, PreconditionFailed
from salus.fhir.bundle import Matcher
from salus.fhir.prepare import PreparedCreates
from salus.fhir.rest import if_match
from salus.fhir.searching import Searcher
from salus.fhir.store import FhirStore, Stored, new_id
from salus.security.policy import Decision
from salus.security.principal import Principal

__all__ = [
    "condition_matcher",
    "conditional_create",
    "conditional_delete",
    "conditional_params",
    "conditional_update",
]

#: A transaction-scoped lock per search condition (PostgreSQL).
_CONDITION_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_SEVERAL = "The search matches several resources."


def condition_matcher(
    searcher: Searcher | None, decide: Callable[[str], Decision], base_url: str
) -> Matcher:
    """Conditional matching: a search under the caller's own filter
    (``decide(res_type)`` is the caller's search decision on that type)."""

    def matches(conn: Any, res_type: str, params: list[tuple[str, str]]) -> list[Stored]:
        if searcher is None:
            raise NotFound("Search is not available.")
        decision = decide(res_type)
        if conn.dialect.name == "postgresql":
            # Two transactions with the same condition (If-None-Exist, conditional
            # update, ifNoneExist) must not both find nothing and both create:
            # the second waits here until the first commits, then sees its row.
            # (SQLite has one writer at a time: nothing to do.)
            key = res_type + "?" + "&".join(f"{k}={v}" for k, v in sorted(params))
            conn.execute(_CONDITION_LOCK, {"key": key})
        result = searcher.search(
            conn,
            decision.require(),
            res_type,
            [*params, ("_count", "2")],
            base_url=base_url,
        )
        return result.matches

    return matches


def conditional_params(query: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The search parameters of a conditional update or delete URL."""
    params = [(k, v) for k, v in query if not k.startswith("_") or k == "_id"]
    if not params:
        raise InvalidInput("A conditional update or delete needs search parameters.")
    return params


def _one_match(
    conn: Any, match: Matcher, res_type: str, params: list[tuple[str, str]], several: str
) -> Stored | None:
    """The one resource the condition matches, None if none; 412 (``several``) if more."""
    found = match(conn, res_type, params)
    if len(found) > 1:
        raise PreconditionFailed(several)
    return found[0] if found else None


def conditional_create(
    conn: Any,
    store: FhirStore,
    match: Matcher,
    res_type: str,
    condition: str,
    batch: PreparedCreates,
) -> tuple[Stored, bool]:
    """http.html#ccreate (``If-None-Exist``): the one match, or the prepared
    create committed; True when created. 412 if several match."""
    params = parse_qsl(condition.split("?", 1)[-1], keep_blank_values=True)
    found = _one_match(conn, match, res_type, params, "If-None-Exist matches several resources.")
    if found is not None:
        return found, False
    [stored] = store.commit_creates(conn, batch)
    return stored, True


def conditional_update(
    conn: Any,
    store: FhirStore,
    principal: Principal,
    match: Matcher,
    res_type: str,
    params: list[tuple[str, str]],
    resource: dict[str, Any],
    headers: Mapping[str, str],
) -> tuple[Stored, bool]:
    """http.html#cond-update: PUT [type]?search — create, update the one match,
    or 412 (``If-Match`` in ``headers`` honoured); True when created."""
    found = _one_match(conn, match, res_type, params, _SEVERAL)
    if found is not None:
        res_id = found.res_id
        if resource.get("id") not in (None, res_id):
            raise InvalidInput(
                "The resource id does not match the one found.",
                expression=[f"{res_type}.id"],
            )
    else:
        res_id = str(resource.get("id") or new_id())
    return store.update(
        conn, principal, res_type, res_id, {**resource, "id": res_id}, if_match=if_match(headers)
    )


def conditional_delete(
    conn: Any,
    store: FhirStore,
    principal: Principal,
    match: Matcher,
    res_type: str,
    params: list[tuple[str, str]],
) -> None:
    """http.html#cdelete (single): delete the one match; 412 if several."""
    found = _one_match(conn, match, res_type, params, _SEVERAL)
    if found is not None:
        store.delete(conn, principal, res_type, found.res_id)
