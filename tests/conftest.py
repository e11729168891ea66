"""Shared by every test folder: each phase's report is kept on the test item
(``item.rep_setup``, ``rep_call``, ``rep_teardown``), so fixtures can tell in
their teardown whether the test failed (see service_harness.show_logs_on_failure)."""

from __future__ import annotations

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
