"""The hand-written stubs of the native module match the binary."""

from __future__ import annotations

import subprocess
import sys


def test_core_stubs_match_the_binary() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "txfast._core"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_wheel_ships_stubs_and_marker() -> None:
    from importlib.resources import files

    pkg = files("txfast")
    assert pkg.joinpath("_core.pyi").is_file()
    assert pkg.joinpath("py.typed").is_file()
