"""The package builds as a user's pip builds it: an isolated build, with no deprecation warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_package_builds_without_setuptools_deprecation_warnings(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert list(tmp_path.glob("agent_kernel-*.whl"))
    output = built.stdout + built.stderr
    assert "Warning" not in output and "deprecated" not in output, output[-3000:]
