"""``salus demo``: a synthetic hospital network, fed into a fresh Salus through
the interfaces real hospitals use (docs/demo.md).

* :mod:`.generator` draws the network from a seed (:mod:`.catalog`, :mod:`.model`);
* :mod:`.fhir_out`, :mod:`.hl7_out`, :mod:`.imaging` and :mod:`.operational` turn it
  into FHIR transactions, HL7 v2 messages, DICOM files and CSV datasets;
  :mod:`.render` collects them with a manifest;
* :mod:`.setup` creates the organizations, users and clients; :mod:`.feed` sends
  the items over HTTP, MLLP and DICOM; :mod:`.cli` ties it together.
"""

from __future__ import annotations

from salus.demo.generator import generate, size_named
from salus.demo.model import SIZES, Network, Size
from salus.demo.render import Rendered, render, write

__all__ = ["SIZES", "Network", "Rendered", "Size", "generate", "render", "size_named", "write"]
