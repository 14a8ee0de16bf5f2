"""CI runs every backend: under ``METAH_REQUIRE_ALL_BACKENDS=1`` a test that would skip (the ways this suite
skips: ``pytest.skip`` in a session fixture, a ``skipif`` marker, ``importorskip``) fails instead."""

from __future__ import annotations

import pytest

SUITE = """
import pytest

@pytest.fixture(scope="session")
def browser():
    pytest.skip("Chromium is not installed")

def test_in_a_browser(browser):
    pass

@pytest.mark.skipif(True, reason="docker-compose is not installed")
def test_compose():
    pass

def test_yaml():
    pytest.importorskip("a_module_that_is_not_installed")

@pytest.mark.xfail(reason="known", strict=True)
def test_known_failure():
    assert False

def test_that_runs():
    pass
"""
CONFTEST = "from tests.conftest import pytest_runtest_makereport  # noqa: F401\n"


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_a_developer_may_run_without_a_backend(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METAH_REQUIRE_ALL_BACKENDS", raising=False)
    suite.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_ci_fails_where_a_backend_is_missing(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAH_REQUIRE_ALL_BACKENDS", "1")
    result = suite.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, errors=2, xfailed=1)  # a skip in setup fails as an error
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    for reason in ("Chromium is not installed", "docker-compose is not installed", "a_module_that_is_not_installed"):
        result.stdout.fnmatch_lines([f"*METAH_REQUIRE_ALL_BACKENDS is set, so this may not skip*{reason}*"])
