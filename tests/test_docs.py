"""The README stays short and keeps its two set-up commands; the docs site in docs/ builds with
`mkdocs build --strict` (no broken link, no missing anchor, no page left out of the nav)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# README's two set-up commands, as the README shows them (an indented code block); the second is
# the test command that .ci/run runs
SETUP_LINE = ('    python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[launchers]" '
              '&& python -m glue_bench -m zoo=mini4,mini8 method=linear eval.allow_code_execution=true')
TEST_LINE = ('    python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" '
             '&& python -m pytest -q -n 2 --dist worksteal')


def test_readme_is_short_and_keeps_the_setup_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; at most 200 (the rest belongs in docs/)"
    assert SETUP_LINE in lines, "README.md lost its set-up command line (the default sweep)"
    assert TEST_LINE in lines, "README.md lost its test command line"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert any(line.startswith(TEST_LINE.strip()) for line in ci), \
        "README.md's test command is no longer the one .ci/run runs"


def test_docs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"mkdocs build --strict failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
