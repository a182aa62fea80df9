"""Fault tests need the real broker and Redis too."""

from tests.integration.conftest import infrastructure  # noqa: F401  (autouse fixture)


def pytest_terminal_summary(terminalreporter) -> None:
    """`make faults` ends with one table of every scenario's figures."""
    from tests.faults import scenarios

    if scenarios.RESULTS:
        terminalreporter.section("fault-injection figures")
        terminalreporter.write_line(scenarios.summary())
