"""Shared test configuration.

With ``KINKO_REQUIRE_REAL_PARTS=1`` (set by ``.ci/run``) a test marked ``etcd`` or ``hsm``
that is skipped counts as a failure: real-part tests may not silently vanish.

Hypothesis runs without its per-example deadline: a deadline is a timed assertion, and on a
shared machine it fails healthy code.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
from hypothesis import settings

settings.register_profile("kinko", deadline=None)
settings.load_profile("kinko")

REAL_PART_MARKERS = ("etcd", "hsm")


def _require_real_parts() -> bool:
    return os.environ.get("KINKO_REQUIRE_REAL_PARTS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (_require_real_parts() and report.skipped):
        return
    markers = [m for m in REAL_PART_MARKERS if item.get_closest_marker(m) is not None]
    if markers:
        report.outcome = "failed"
        report.longrepr = (
            f"real-part test ({', '.join(markers)}) was skipped, "
            "but KINKO_REQUIRE_REAL_PARTS=1 requires it to run"
        )
