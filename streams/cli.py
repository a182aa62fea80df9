"""The `geodispatch` command line: one entry point, a subcommand per job, `--help` on each.
Exit codes: 0 done, 1 failed, 2 bad usage (click's), 3 nothing could be reached."""

from __future__ import annotations

import asyncio
import gc
import os
import sys

import click
from pydantic import ValidationError

from infra.settings import Settings


def _settings() -> Settings:
    return Settings()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """geodispatch: real-time dispatch on Kafka. Settings come from GEODISPATCH_* variables
    (see README.md); KAFKA_BOOTSTRAP_SERVERS and REDIS_URL point it at your servers."""


@main.command()
@click.option("--web-port", type=int, default=None, help="HTTP port (default: GEODISPATCH_WEB_PORT or 6066).")
@click.option("--roles", default=None, metavar="ROLES",
              help="Comma-separated: sessions, assignments, api (default: GEODISPATCH_ROLES, all three).")
def worker(web_port: int | None, roles: str | None) -> None:
    """Run one pipeline worker process. With every role (the default) it runs all agents, the tables
    and the HTTP API. `--roles sessions,assignments` runs the stream processors without the sessions
    API (/health, /stats and /metrics stay); `--roles api` runs only the sessions API, answering from
    the shared Redis index (no data directory; Kafka only for /dispatch/supply-demand), in as many
    processes as HTTP load needs."""
    try:
        import faust  # noqa: F401
    except ImportError:
        click.echo("error: the worker's dependencies are not installed: pip install 'geodispatch[worker]'", err=True)
        sys.exit(1)
    update: dict[str, object] = {} if web_port is None else {"web_port": web_port}
    if roles is not None:
        update["roles"] = roles
    try:
        settings = Settings(**update)  # over the environment's settings
    except ValidationError as exc:
        raise click.BadParameter(exc.errors()[0]["msg"], param_hint="--roles/--web-port") from None
    from streams.logging import configure_logging

    if settings.niceness:
        os.nice(settings.niceness)
    if not settings.runs_streams:
        configure_logging(settings.log_level, settings.log_format)
        from streams.api import serve

        serve(settings)
        return
    # faust creates only the last level of its data directory.
    settings.store_dir.mkdir(parents=True, exist_ok=True)
    if settings.event_loop == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")  # before faust creates the loop
    configure_logging(settings.log_level, settings.log_format)
    from faust import Worker

    from streams.app import DispatchApp

    app = DispatchApp(settings)
    # Python's full collections walk every object the collector tracks. The libraries' and the app's
    # own live as long as the process and are never garbage: frozen, they are left out of every
    # collection, which were pauses on the request path before (bench/README.md, the fleet).
    gc.collect()
    gc.freeze()
    Worker(app, loglevel=settings.log_level, override_logging=False, quiet=True).execute_from_commandline()


@main.command("run")
@click.option("--shape", type=click.Choice(["roles", "one"]), default="roles", show_default=True,
              help="roles: a process per role (sessions, assignments, api); one: one process of every role.")
@click.option("--web-port", type=int, default=None,
              help="The sessions API's port (default: GEODISPATCH_WEB_PORT or 6066); the stream processes "
                   "serve /health, /stats and /metrics on the next ones.")
def run_deployment(shape: str, web_port: int | None) -> None:
    """Run the deployment recommended for one machine: a worker process per role, started and stopped
    together (Ctrl-C or SIGTERM stops them all; so does one of them exiting, with its exit code).
    docs/DEPLOYMENT.md sizes the shapes."""
    from streams.logging import configure_logging
    from streams.processes import run
    from streams.processes import shape as processes_of

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    sys.exit(run(processes_of(shape, web_port or settings.web_port)))


@main.group(invoke_without_command=True)
@click.option("--host", default=None, help="Address to listen on (default: GEODISPATCH_GATEWAY_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: GEODISPATCH_GATEWAY_PORT, 6070).")
@click.pass_context
def gateway(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the real-time gateway: tracking, assignments and presence pushed to apps over Socket.IO and
    SSE (/realtime/{channel}), and the live operator map at /map/ (docs/GATEWAY.md). Needs
    GEODISPATCH_JWT_SECRET or GEODISPATCH_JWT_PUBLIC_KEY. `geodispatch gateway token --help` makes a
    token for trying it."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        import socketio  # noqa: F401
    except ImportError:
        click.echo("error: the gateway's dependencies are not installed: pip install 'geodispatch[gateway]'", err=True)
        sys.exit(1)
    from consumers.gateway.server import serve
    from streams.logging import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    serve(settings, host or settings.gateway_host, port or settings.gateway_port)


@gateway.command("token")
@click.option("--sub", required=True, help="The user id (a rider's, a driver's, a support agent's).")
@click.option("--role", required=True, type=click.Choice(["client", "driver", "support", "admin"]))
@click.option("--scopes", default="booking.*.tracking user.*.events presence map", show_default=True,
              help="Space-separated channel patterns the token may subscribe to.")
@click.option("--ttl-s", type=click.IntRange(1, 7 * 86_400), default=3600, show_default=True,
              help="Lifetime in seconds.")
def gateway_token(sub: str, role: str, scopes: str, ttl_s: int) -> None:
    """Print an HS256 token signed with GEODISPATCH_JWT_SECRET: for trying the gateway and for tests.
    In production the tokens come from your identity service (seed 002: short-lived, refreshed by REST)."""
    import time

    import jwt

    settings = _settings()
    if settings.jwt_secret is None:
        click.echo("error: GEODISPATCH_JWT_SECRET is not set", err=True)
        sys.exit(1)
    claims = {"sub": sub, "role": role, "scopes": scopes.split(), "exp": int(time.time()) + ttl_s}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    click.echo(jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256"))


@main.group()
def topics() -> None:
    """Create, update and list the contract's topics."""


DRY_RUN_ACTIONS = {"created": "would create", "partitions": "would widen", "configs": "would set"}


@topics.command("apply")
@click.option("--regions", default=None, help="Comma-separated region keys (default: GEODISPATCH_REGIONS).")
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@click.option("--create-only", is_flag=True,
              help="Create missing topics; change no existing one (report how each differs from the plan).")
@click.option("--allow-repartition", is_flag=True,
              help="Add partitions to existing topics when GEODISPATCH_PARTITIONS asks for more (see below).")
def topics_apply(regions: str | None, dry_run: bool, create_only: bool, allow_repartition: bool) -> None:
    """Create the plan's missing topics and set, on existing ones, the configs the pipeline needs
    (cleanup policy, the DLQ's message size), and only those: other configs an operator set stay as
    they are, and so do retention times, which are set only when a topic is created. Reports each
    change ("kept" for a tunable config left as the topic has it). Idempotent.

    \b
    Partitions are never added unless --allow-repartition is given: every keyed topic and the tables'
    changelogs must grow together, with every worker stopped, and adding partitions moves keys. A
    driver's later records land on another partition than his session, which starts again from them
    (offline until his next status; a trip in progress is no longer on it), and a redelivered request
    no longer finds its decision in the table (Redis still holds it, for its retention). Widen when no
    trips are open, then have the gateways send every driver's status again. Exit 1 when partitions
    were refused."""
    from infra.admin import Options, apply_plan
    from infra.topics import TopicNames, plan

    settings = _settings()
    region_keys = tuple(r.strip() for r in regions.split(",")) if regions else settings.regions
    specs = plan(TopicNames(settings.topic_prefix), region_keys, settings.partitions, settings.replication_factor,
                 settings.app_id)
    options = Options(dry_run=dry_run, allow_repartition=allow_repartition, create_only=create_only)

    async def run() -> list:
        async with _admin(settings) as admin:
            return await apply_plan(admin, specs, options)

    changes = asyncio.run(run())
    for change in changes:
        action = DRY_RUN_ACTIONS.get(change.action, change.action) if dry_run else change.action
        click.echo(f"{action:<16} {change.topic}{'  ' + change.detail if change.detail else ''}")
    made = {c.topic for c in changes if c.changes_something}
    left = {c.topic for c in changes} - made
    click.echo(f"topics: {len(made)} {'to change' if dry_run else 'changed'}, {len(left)} left as they are")
    refused = [c for c in changes if c.action == "refused"]
    if refused:
        click.echo(f"error: {len(refused)} topics have fewer partitions than GEODISPATCH_PARTITIONS="
                   f"{settings.partitions}; none were added. Read `geodispatch topics apply --help` before "
                   "giving --allow-repartition.", err=True)
        sys.exit(1)


@topics.command("grow")
def topics_grow() -> None:
    """Grow a stopped deployment to GEODISPATCH_PARTITIONS partitions, keeping every driver's session
    and every order's decision: widen every keyed topic and both changelogs, move each table entry
    whose key now hashes to another partition (a copy, then a tombstone in the old one), and move the
    drivers', reservations' and decisions' Redis keys to their new partitions, with a new index epoch.

    \b
    Stop every worker first (exit 2 while a consumer group of the deployment has members); then
    raise GEODISPATCH_PARTITIONS everywhere and start them. A run cut short is finished by running it
    again. Records the workers had not read yet are moved to their new partitions as they are read."""
    from infra.repartition import WorkersRunning, grow

    settings = _settings()
    try:
        growth = asyncio.run(grow(settings, lambda line: click.echo(line, err=True)))
    except WorkersRunning as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    moved = sum(growth.entries_moved.values())
    click.echo(f"grown from {growth.partitions_before} to {growth.partitions} partitions: {growth.topics_widened} "
               f"topics widened, {moved} table entries and {growth.redis_keys_moved} Redis keys moved")


@topics.command("list")
def topics_list() -> None:
    """List the topics on the broker with their partition counts."""
    settings = _settings()

    async def run() -> list[tuple[str, int]]:
        async with _admin(settings) as admin:
            names = sorted(n for n in await admin.list_topics() if not n.startswith("__"))
            described = await admin.describe_topics(names) if names else []
            return [(t["topic"], len(t["partitions"])) for t in described]

    for name, partitions in sorted(asyncio.run(run())):
        click.echo(f"{partitions:>4}  {name}")


class _admin:
    """An admin client for the CLI's short jobs, closed on exit."""

    def __init__(self, settings: Settings) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        self._client = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers, **settings.kafka_client_options()
        )

    async def __aenter__(self):
        try:
            await self._client.start()
        except Exception as exc:  # the broker cannot be reached: say so plainly, exit 3
            click.echo(f"error: cannot reach Kafka ({type(exc).__name__}: {exc})", err=True)
            sys.exit(3)
        return self._client

    async def __aexit__(self, *exc_info) -> None:
        await self._client.close()


@main.command()
def topology() -> None:
    """Say, for every topic the worker reads and every timer, its handler, the state it touches and
    what it writes (streams/topology.py)."""
    try:
        from streams.topology import describe
    except ImportError:
        click.echo("error: the worker's dependencies are not installed: pip install 'geodispatch[worker]'", err=True)
        sys.exit(1)
    for row in describe():
        click.echo(f"{row['reads']}\n  read by   {row['by']} (role {row['role']})\n  handler   {row['handler']}\n"
                   f"  state     {row['state']}\n  writes    {row['writes']}")


@main.group()
def index() -> None:
    """The shared Redis index of driver sessions."""


@index.command("rebuild")
def index_rebuild() -> None:
    """Ask every worker to rebuild its part of the index from its tables (within a second)."""
    from streams.index import RegionIndex

    settings = _settings()

    async def run() -> str:
        idx = RegionIndex.from_settings(settings)
        try:
            return await idx.request_rebuild()
        finally:
            await idx.aclose()

    click.echo(f"index: new epoch {asyncio.run(run())}; every worker rebuilds its part within a second")


@index.command("forget-old-layout")
def index_forget_old_layout() -> None:
    """Delete the Redis keys that workers before the Redis Cluster layout wrote (0.1.0's index,
    reservations and decisions); the new workers rebuild theirs from their tables. Safe while they run."""
    from streams.index import RegionIndex

    settings = _settings()

    async def run() -> int:
        idx = RegionIndex.from_settings(settings)
        try:
            return await idx.forget_old_layout(lambda n: click.echo(f"index: {n} old keys deleted so far", err=True))
        finally:
            await idx.aclose()

    click.echo(f"index: {asyncio.run(run())} keys of the old layout deleted")


def _register_operator_commands() -> None:
    """The producers' and consumers' commands live in their own packages (issue 5)."""
    from consumers.cli import consume, dlq, orders, supply_demand
    from producers.cli import produce, simulate
    from schemas.cli import schemas

    for command in (produce, simulate, consume, dlq, orders, supply_demand, schemas):
        main.add_command(command)


_register_operator_commands()

if __name__ == "__main__":
    main()
