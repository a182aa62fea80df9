"""The upgrade test needs the real broker and Redis too."""

from tests.integration.conftest import infrastructure  # noqa: F401  (autouse fixture)
