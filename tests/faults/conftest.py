"""Fault tests need the real broker and Redis too."""

from tests.integration.conftest import infrastructure  # noqa: F401  (autouse fixture)
