"""Shared test configuration: integration tests fail (not skip) when the broker or Redis is missing
under `make test` / CI, where GEODISPATCH_REQUIRE_INFRA=1."""
