"""The shape every mapping produces: a :class:`Plan` of find-or-create steps.

A mapper reads one message and returns a plan; the applier
(:mod:`salus.hl7.apply`) runs the plan inside one database transaction through
the FHIR store, so validation, indexing, access control and audit are the
FHIR API's, and a message is applied whole or not at all.

Each :class:`Step` names a resource type and how to find the existing resource
(search parameters, usually ``identifier=system|value``, run under the
feed's own access filter, so a hospital never matches another's records), and
a ``build`` function from the existing resource (or None) to the resource to
write (or None: leave it as it is). References to earlier steps are written
``{"reference": "local:<key>"}`` and resolved when the plan runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from salus.hl7.parse import Message, Segment
from salus.hl7.profiles import Profile

__all__ = ["Builder", "Context", "Plan", "Step", "local"]

Resource = dict[str, Any]
Builder = Callable[[Resource | None], Resource | None]


def local(key: str) -> dict[str, str]:
    """A reference to the resource of an earlier step."""
    return {"reference": f"local:{key}"}


@dataclass
class Step:
    key: str
    res_type: str
    #: Search parameters that find the existing resource; None: always create.
    match: list[tuple[str, str]] | None
    build: Builder
    #: When True and nothing matches, the step is skipped instead of created.
    existing_only: bool = False
    #: The existing resource is that of an earlier step (by key), not a search.
    target: str | None = None
    #: Earlier steps that must have produced a resource, or this step is skipped.
    requires: tuple[str, ...] = ()


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        return step

    def has(self, key: str) -> bool:
        return any(step.key == key for step in self.steps)


@dataclass
class Context:
    message: Message
    profile: Profile

    def z_extensions(self) -> list[dict[str, Any]]:
        """Z-segments kept as extensions on the main resource (profile ``z_segments``)."""
        if self.profile.z_segments != "extension":
            return []
        return [
            {"url": "urn:salus:hl7:z-segment", "valueString": str(seg)}
            for seg in self.message.segments
            if seg.name.startswith("Z")
        ]

    def seg(self, name: str) -> Segment:
        return self.message.require(name)


def merger(fresh: Resource) -> Builder:
    """A builder that merges ``fresh`` into what exists (see :func:`common.merge`)."""
    from salus.hl7.mapping.common import merge

    def build(existing: Resource | None) -> Resource | None:
        return merge(existing, fresh)

    return build
