"""Nothing acknowledged is lost: the message row is committed before the ACK
leaves, and a message committed but not applied (a crash between the two) is
applied once by the recovery sweep that runs at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from salus.db import create_database
from salus.db.tables_hl7 import hl7_messages
from salus.hl7.runtime import Hl7Runtime
from tests.conftest import BACKENDS
from tests.integration.hl7_world import ack_code, adt, hl7_world


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_is_committed_before_the_ack_and_applied_once_after_a_crash(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with hl7_world(backend, tmp_path, hl7_apply="async") as w:
        services = w.world.services
        seen_at_reply: list[str] = []
        original = Hl7Runtime._reply

        def reply_after_commit(self: Hl7Runtime, received: object) -> bytes | None:
            # Another connection (another transaction) must already see the row.
            other = create_database(services.settings.database_url_value(), pool_size=1)
            try:
                with other.read() as conn:
                    states = conn.execute(select(hl7_messages.c.state)).scalars().all()
            finally:
                other.dispose()
            seen_at_reply.append(",".join(states))
            return original(self, received)  # type: ignore[arg-type]

        monkeypatch.setattr(Hl7Runtime, "_reply", reply_after_commit)
        # The "crash" happens after the commit and the ACK, before the mapping:
        # the background applier is never woken.
        w.runtime.service.on_pending = lambda: None
        c = w.client()
        assert ack_code(c.send(adt("K1", "A01"))) == "AA"
        assert seen_at_reply == ["received"]
        assert w.search("a-feed", "Patient") == []
        # Start-up recovery applies it, once; a second sweep finds nothing.
        assert w.runtime.apply_pending() == 1
        assert w.runtime.apply_pending() == 0
        [patient] = w.search("a-feed", "Patient")
        assert patient["meta"]["versionId"] == "1"
        # The sender, unsure, resends: acknowledged again, not applied twice.
        assert ack_code(c.send(adt("K1", "A01"))) == "AA"
        assert w.runtime.apply_pending() == 0
        assert len(w.runtime.store.list()) == 1
        [patient] = w.search("a-feed", "Patient")
        assert patient["meta"]["versionId"] == "1"
