"""Where the tests find the OpenKBP patients: ``../shared/data/openkbp`` beside the repository (read
there, never copied in); :data:`needs_openkbp` skips a test, saying why, where it is absent."""

from pathlib import Path

import pytest

OPENKBP = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "openkbp"

needs_openkbp = pytest.mark.skipif(
    not (OPENKBP / "validation").is_dir(),
    reason=f"the OpenKBP patients are not at {OPENKBP} (a fresh clone without the shared data folder)")
