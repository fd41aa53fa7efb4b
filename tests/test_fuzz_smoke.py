"""A short run of every libFuzzer target over its seed corpus (the >= 10M-execution runs are manual:
see the Makefile's fuzz target). Skips without clang."""
import shutil
import subprocess

import pytest

from conftest import REPO, need_tool

TARGETS = sorted(p.stem for p in (REPO / "tests" / "fuzz").glob("fuzz_*.c"))


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_smoke(target, tmp_path):
    need_tool("clang")
    build = subprocess.run(["make", "-s", "-C", str(REPO), f"build/fuzz/{target}"], capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-4000:]
    corpus = REPO / "tests" / "fuzz" / "corpus" / target.removeprefix("fuzz_")
    work = tmp_path / "corpus"
    work.mkdir()  # new inputs go here, never into the repo's seeds
    proc = subprocess.run([str(REPO / "build" / "fuzz" / target), "-runs=100000", "-max_total_time=60",
                           str(work), str(corpus)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "Done" in proc.stderr
