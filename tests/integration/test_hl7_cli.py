"""``salus hl7 list|show|replay|import|send`` on SQLite and PostgreSQL: the
integration engineer's tools on the server host, over the same message store
as the MLLP listener (docs/hl7.md, "Errors and replay")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from salus.cli import main
from salus.db.tables import jobs
from salus.hl7.mapping import SUPPORTED
from tests.conftest import BACKENDS
from tests.integration.hl7_world import Hl7World, adt, hl7_world, segments_of


@pytest.fixture(params=BACKENDS)
def w(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    with hl7_world(request.param, tmp_path) as world:
        yield world


def cli(w: Hl7World, *args: str) -> Result:
    settings = w.world.services.settings
    env = {
        "SALUS_DATA_DIR": str(settings.data_dir),
        "SALUS_HL7_PROFILES_FILE": str(settings.hl7_profiles_file),
        "SALUS_JOBS_ENABLED": "false",
    }
    if settings.database_url is not None:
        env["SALUS_DATABASE_URL"] = settings.database_url.get_secret_value()
    return CliRunner().invoke(main, ["hl7", *args], env=env, catch_exceptions=False)


def failed_message(w: Hl7World, monkeypatch: pytest.MonkeyPatch, control: str) -> int:
    def broken(_ctx: object) -> Any:
        raise KeyError("a mapping bug")

    monkeypatch.setitem(SUPPORTED["ADT"], "A01", broken)
    reply = segments_of(w.client().send(adt(control, "A01", mrn=f"MRN-{control}")))
    assert reply["MSA"][1] == "AE"
    monkeypatch.undo()  # the fix is deployed
    [row] = [r for r in w.runtime.store.list() if r["control_id"] == control]
    return int(row["id"])


def test_list_show_and_replay(w: Hl7World, monkeypatch: pytest.MonkeyPatch) -> None:
    first = failed_message(w, monkeypatch, "C1")
    second = failed_message(w, monkeypatch, "C2")
    assert w.search("a-feed", "Patient") == []

    listed = cli(w, "list", "--state", "failed", "--json")
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert [(r["control_id"], r["state"], r["ack_code"]) for r in rows] == [
        ("C2", "failed", "AE"),
        ("C1", "failed", "AE"),
    ]
    assert "Nguyễn" not in listed.output  # the list carries no patient data
    table = cli(w, "list", "--org", "hosp-b")
    assert table.exit_code == 0 and table.output == ""
    table = cli(w, "list", "--type", "ADT^A01", "--limit", "1")
    assert table.exit_code == 0 and len(table.output.splitlines()) == 1 and "C2" in table.output

    shown = cli(w, "show", str(first))
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.output)
    assert summary["state"] == "failed" and summary["error_code"] == "207"
    assert "Nguyễn" not in shown.output
    with_body = cli(w, "show", summary["uid"], "--body")  # by uid too
    assert with_body.exit_code == 0
    assert "MSH|^~\\&|HIS|HOSPA" in with_body.output and "Nguyễn^Văn^An" in with_body.output
    assert cli(w, "show", "999999").exit_code == 2

    replayed = cli(w, "replay", str(first))
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1: {'AA': 1}" in replayed.output
    [patient] = w.search("a-feed", "Patient")
    assert patient["identifier"][0]["value"] == "MRN-C1"
    # An applied message is not replayed again.
    again = cli(w, "replay", str(first))
    assert again.exit_code == 2 and "Only failed" in again.output
    # --failed: every failed message (here, of hosp-a).
    assert cli(w, "replay", "--failed", "--org", "hosp-b").output.strip() == "replayed 0: {}"
    everything = cli(w, "replay", "--failed", "--org", "hosp-a")
    assert everything.exit_code == 0 and "replayed 1: {'AA': 1}" in everything.output
    assert w.runtime.store.get(second)["state"] == "applied"
    assert len(w.search("a-feed", "Patient")) == 2
    assert cli(w, "replay").exit_code == 2  # nothing named


def test_import_files_with_bom_line_feeds_and_batches(w: Hl7World, tmp_path: Path) -> None:
    one = adt("F1", "A01", mrn="FILE1", visit="FV1").replace(b"\r", b"\r\n")
    two = adt("F2", "A28", mrn="FILE2").replace(b"\r", b"\n")
    batch = b"BHS|^~\\&|HIS|HOSPA\n" + two + adt("F3", "A28", mrn="FILE3") + b"BTS|2\n"
    files = [tmp_path / "one.hl7", tmp_path / "batch.hl7"]
    files[0].write_bytes(b"\xef\xbb\xbf" + one)
    files[1].write_bytes(batch)
    result = cli(w, "import", *map(str, files), "--client", "a-feed")
    assert result.exit_code == 0, result.output
    assert "imported: {'AA': 3}" in result.output
    mrns = sorted(p["identifier"][0]["value"] for p in w.search("a-feed", "Patient"))
    assert mrns == ["FILE1", "FILE2", "FILE3"]
    assert len(w.search("a-feed", "Encounter")) == 1
    rows = w.runtime.store.list()
    assert {r["source"] for r in rows} == {"file"} and {r["state"] for r in rows} == {"applied"}
    # Importing the same file again stores nothing new and applies nothing twice.
    again = cli(w, "import", str(files[0]), "--client", "a-feed")
    assert again.exit_code == 0 and len(w.runtime.store.list()) == 3
    # Without --client the facility's profile names the sender (hosp-a here).
    alone = tmp_path / "alone.hl7"
    alone.write_bytes(adt("F4", "A28", mrn="FILE4"))
    assert "imported: {'AA': 1}" in cli(w, "import", str(alone)).output
    assert cli(w, "import", str(tmp_path / "missing.hl7")).exit_code == 2


def test_send_queues_an_outbound_job(w: Hl7World, tmp_path: Path) -> None:
    message = tmp_path / "result.hl7"
    message.write_bytes(adt("O1", "A08").replace(b"\r", b"\n"))
    result = cli(w, "send", str(message), "--destination", "his-a")
    assert result.exit_code == 0, result.output
    job_id = int(result.output.strip().rsplit(" ", 1)[-1])
    with w.world.services.db.read() as conn:
        job = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one()
    assert job["kind"] == "hl7.send"
    assert "Nguyễn" not in json.dumps(job["payload"])  # the message is sealed in the payload
    unknown = cli(w, "send", str(message), "--destination", "nowhere")
    assert unknown.exit_code == 2 and "Unknown HL7 destination" in unknown.output
