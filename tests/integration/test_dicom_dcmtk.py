"""Interoperability with dcmtk's SCUs (Debian package ``dcmtk``) on a loopback port."""

from __future__ import annotations

import os
import shutil
import subprocess  # noqa: S404 - runs dcmtk's command-line tools with fixed arguments
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import BACKENDS
from tests.integration.dicom_world import STORE_AE, StoreSCP, dicom_world

DATA = Path(__file__).resolve().parents[1] / "data" / "dicom"
TOOLS = ("echoscu", "storescu", "findscu", "getscu", "movescu")


def dcmtk(tool: str) -> str | None:
    """dcmtk's binary, not pynetdicom's Python apps of the same names in the venv."""
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix)
    )
    return shutil.which(tool, path=path)


pytestmark = pytest.mark.skipif(
    any(dcmtk(tool) is None for tool in TOOLS),
    reason="dcmtk is not installed (apt-get install dcmtk; .ci/run installs it)",
)
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


def run(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(  # noqa: S603 - fixed tool names, test arguments
        [dcmtk(tool) or tool, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_dcmtk_scus(backend: str, tmp_path: Path) -> None:
    scp = StoreSCP()
    try:
        with dicom_world(
            backend, tmp_path, dicom_move_destinations={STORE_AE: f"127.0.0.1:{scp.port}"}
        ) as dw:
            port = str(dw.port)
            base = ["-aet", "MOD_A", "-aec", "SALUS", "127.0.0.1", port]
            assert run("echoscu", *base).returncode == 0
            stored = run("storescu", *base, str(DATA / "CT_small.dcm"))
            assert stored.returncode == 0, stored.stderr
            # -xr: propose RLE Lossless, the file's transfer syntax (kept as is)
            stored = run("storescu", "-xr", *base, str(DATA / "MR_small_RLE.dcm"))
            assert stored.returncode == 0, stored.stderr
            principal = dw.principal()
            assert len(dw.archive.find(principal, "IMAGE", {})) == 2
            refused = run(
                "storescu",
                "-aet",
                "NOBODY",
                "-aec",
                "SALUS",
                "127.0.0.1",
                port,
                str(DATA / "CT_small.dcm"),
            )
            assert refused.returncode != 0
            assert "Rejected" in refused.stderr or "Rejected" in refused.stdout
            found = run(
                "findscu",
                "-S",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                "PatientID=1CT1",
                "-k",
                "StudyInstanceUID",
                "-k",
                "PatientName",
                *base,
            )
            assert found.returncode == 0, found.stderr
            assert CT_STUDY in found.stderr + found.stdout
            out = tmp_path / "got"
            out.mkdir()
            got = run(
                "getscu",
                "-S",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={CT_STUDY}",
                "-od",
                str(out),
                *base,
            )
            assert got.returncode == 0, got.stderr
            files = list(out.iterdir())
            assert len(files) == 1
            fetched = dcmread(files[0])
            assert fetched.SOPInstanceUID == CT_SOP
            # getscu re-encodes what it writes to disk; the content is the same
            original = dcmread(DATA / "CT_small.dcm")
            assert fetched.PixelData == original.PixelData
            assert fetched.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
            moved = run(
                "movescu",
                "-S",
                "-aem",
                STORE_AE,
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={CT_STUDY}",
                *base,
            )
            assert moved.returncode == 0, moved.stderr
            assert CT_SOP in scp.received
    finally:
        scp.stop()
