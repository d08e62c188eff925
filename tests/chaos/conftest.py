"""Fixtures of the fault drills (tests/conftest.py's fixtures apply here too)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.drills import DrillLog


@pytest.fixture
def drill_log(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> Iterator[DrillLog]:
    """The drill's log. Its `drill:` / `check:` lines are in pytest's captured output (live
    with `-s`); a one-line summary of the checks goes to the terminal in any case."""
    drill = DrillLog(request.node.name)
    yield drill
    with capsys.disabled():
        print("\n" + drill.summary())
