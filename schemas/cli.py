"""`geodispatch schemas`: the project's Avro schemas in a schema registry (GEODISPATCH_SCHEMA_REGISTRY_URL)."""

from __future__ import annotations

import json
import sys

import click

from infra.settings import Settings
from infra.topics import TopicNames
from schemas.compat import load_versions
from schemas.registry import RegistryClient, RegistryError, SchemaNotFound, subjects

# The same exit codes as every other command (streams/cli.py).
EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


@click.group()
def schemas() -> None:
    """The Avro schemas of the contract in a Confluent-compatible schema registry."""


@schemas.command("register")
@click.option("--url", default=None, metavar="URL",
              help="The registry's base URL (default: GEODISPATCH_SCHEMA_REGISTRY_URL).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per subject instead of a table.")
def register(url: str | None, as_json: bool) -> None:
    """Registers every shipped version of each schema (oldest first) under `<topic>-value` for every input
    and output topic of the deployment, and prints each subject's id of the current version. Idempotent:
    a registry answers a schema it already has under a subject with the id it gave it. Exit 1 when the
    registry refuses a schema (say, its compatibility rule), 3 when it cannot be reached."""
    settings = Settings()
    url = url or settings.schema_registry_url
    if not url:
        raise click.UsageError("no registry: set GEODISPATCH_SCHEMA_REGISTRY_URL or pass --url")
    client = RegistryClient(url, timeout_s=10.0)
    by_name, problems = load_versions()
    if problems:  # the shipped history itself is broken: registering it would spread that
        for problem in problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(EXIT_FAILED)
    plan = subjects(TopicNames(settings.topic_prefix), settings.regions)
    for subject, name in plan.items():
        versions = by_name[name]
        try:
            ids = [client.register(subject, version.raw) for version in versions]
        except SchemaNotFound as exc:  # a 404 on POST: not a registry's Confluent API at this URL
            click.echo(f"error: {subject}: {exc} (is {url} a Confluent-compatible API?)", err=True)
            sys.exit(EXIT_FAILED)
        except RegistryError as exc:
            click.echo(f"error: {subject}: {exc}", err=True)
            sys.exit(EXIT_UNREACHABLE if exc.status is None else EXIT_FAILED)
        current = versions[-1]
        if as_json:
            click.echo(json.dumps({"subject": subject, "schema": name, "version": current.version,
                                   "id": ids[-1], "ids": ids}))
        else:
            click.echo(f"{subject:<55} {current.stem:<24} id {ids[-1]}")
    if not as_json:
        click.echo(f"{len(plan)} subjects registered in {url}")
