"""Runs every C unit-test program (TAP) in both the release and the ASan+UBSan builds."""
import subprocess

import pytest

from conftest import BUILD, RELEASE, REPO

BINS = sorted({p for d in (RELEASE, BUILD) for p in (d / "tests" / "unit").glob("test_*") if p.is_file()})


@pytest.mark.parametrize("binary", BINS, ids=[str(p.relative_to(REPO)) for p in BINS])
def test_unit_program(binary):
    proc = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    if proc.returncode == 77:
        reason = next((l.split("# SKIP", 1)[1].strip() for l in proc.stdout.splitlines() if "# SKIP" in l),
                      "skipped")
        pytest.skip(reason)
    failures = [l for l in proc.stdout.splitlines() if l.startswith("not ok") or l.startswith("#")]
    assert proc.returncode == 0, "\n".join(failures) + "\n" + proc.stderr[-4000:]
