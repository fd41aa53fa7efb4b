"""Shared pytest fixtures: where the binaries are, and skip helpers with one-line reasons."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Tests drive the sanitizer build unless told otherwise (CELLA_BUILD=build for release).
BUILD = REPO / os.environ.get("CELLA_BUILD", "build/asan")
RELEASE = REPO / "build"

os.environ.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1:exitcode=99")
os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1:exitcode=99")


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root")


def need_tool(name):
    if shutil.which(name) is None:
        pytest.skip(f"needs {name} (not installed)")


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 60)
    return subprocess.run(cmd, **kw)


@pytest.fixture(scope="session")
def build_dir():
    return BUILD
