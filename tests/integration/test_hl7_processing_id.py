"""MSH-11 processing id (HL7 v2.8 2.14.9.11, table 0103): a hub refuses the
processing ids its hospital profile does not allow with AR and an ERR 202 at
MSH-11, keeps the refused message, and writes nothing to FHIR; without
``processing_ids`` a production hub takes P only and a development hub all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from salus.errors import ConfigurationError, NotSupported
from salus.hl7.parse import parse_message
from salus.hl7.profiles import Profile, Profiles
from salus.hl7.service import Hl7Service
from tests.conftest import BACKENDS
from tests.integration.hl7_world import adt, hl7_world, segments_of


def with_processing_id(message: bytes, processing_id: str) -> bytes:
    fields = message.split(b"\r", 1)[0].split(b"|")
    fields[10] = processing_id.encode()
    return b"|".join(fields) + b"\r" + message.split(b"\r", 1)[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_profile_refuses_processing_ids_it_does_not_allow(backend: str, tmp_path: Path) -> None:
    with hl7_world(backend, tmp_path, extra_profiles='processing_ids = ["P"]') as w:
        c = w.client()
        reply = segments_of(c.send(with_processing_id(adt("T1", "A01", mrn="TRAIN1"), "T")))
        assert reply["MSA"][1:3] == ["AR", "T1"]
        assert reply["ERR"][2] == "MSH^1^11"
        assert reply["ERR"][3] == "202^Unsupported processing id^HL70357"
        assert reply["MSH"][10] == "T"  # the ACK echoes the sender's processing id
        debug = segments_of(c.send(with_processing_id(adt("D1", "A01", mrn="DEBUG1"), "D")))
        assert debug["MSA"][1] == "AR"
        # Production messages go through; refused ones are kept, and wrote nothing.
        reply = segments_of(c.send(adt("P1", "A01", mrn="PROD1")))
        assert reply["MSA"][1] == "AA" and "ERR" not in reply
        assert [p["identifier"][0]["value"] for p in w.search("a-feed", "Patient")] == ["PROD1"]
        rows = {r["control_id"]: r for r in w.runtime.store.list()}
        assert rows["T1"]["state"] == rows["D1"]["state"] == "rejected"
        assert rows["T1"]["processing_id"] == "T" and rows["T1"]["error_code"] == "202"
        assert rows["P1"]["state"] == "applied"


@pytest.mark.parametrize("backend", BACKENDS)
def test_development_hub_takes_test_messages_without_a_profile_list(
    backend: str, tmp_path: Path
) -> None:
    with hl7_world(backend, tmp_path) as w:
        c = w.client()
        reply = segments_of(c.send(with_processing_id(adt("T2", "A01", mrn="TRAIN2"), "T")))
        assert reply["MSA"][1] == "AA"
        assert len(w.search("a-feed", "Patient")) == 1


def _service(production: bool) -> Hl7Service:
    none: Any = None
    return Hl7Service(
        none, none, none, None, none, none, Profiles(), base_url="", production=production
    )


@pytest.mark.parametrize(
    ("production", "allowed", "processing_id", "accepted"),
    [
        (True, None, "P", True),
        (True, None, "T", False),
        (True, None, "D", False),
        (True, None, "", False),
        (True, ("P", "T"), "T", True),
        (True, ("P", "T"), "D", False),
        (False, None, "T", True),
        (False, None, "D", True),
        (False, ("P",), "T", False),
    ],
)
def test_processing_id_rule(
    production: bool, allowed: tuple[str, ...] | None, processing_id: str, accepted: bool
) -> None:
    message = parse_message(with_processing_id(adt("X1", "A01"), processing_id))
    profile = Profile("hosp-a", processing_ids=allowed)
    service = _service(production)
    if accepted:
        service._check_processing_id(profile, message.header)
    else:
        with pytest.raises(NotSupported) as raised:
            service._check_processing_id(profile, message.header)
        assert getattr(raised.value, "hl7_code", None) == "202"


def test_profiles_file_checks_processing_ids() -> None:
    profiles = Profiles.from_dict({"org": {"hosp-a": {"processing_ids": ["p", "T"]}}})
    assert profiles.for_org("hosp-a").processing_ids == ("P", "T")
    with pytest.raises(ConfigurationError, match="processing_ids"):
        Profiles.from_dict({"org": {"hosp-a": {"processing_ids": ["X"]}}})
