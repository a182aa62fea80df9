"""`geodispatch topics apply` against the real broker changes only what it must: configs an operator
set stay, retention included; the pipeline's own configs are set without touching the others;
partitions are added only when told, and then to every keyed topic and changelog together; a dry
run and a create-only run change nothing that exists."""

from __future__ import annotations

import subprocess

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from infra.admin import incremental_alter
from infra.topics import TABLES
from tests.integration.harness import BOOTSTRAP, ROOT, run, wait_for

WEEK_MS, HOUR_MS = str(7 * 86_400_000), str(3_600_000)


def _said(output: str) -> str:
    """The command's report with its columns' padding folded to single spaces."""
    return "\n".join(" ".join(line.split()) for line in output.splitlines())


async def _with_admin(action):
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        return await action(admin)
    finally:
        await admin.close()


def _configs(topic: str) -> dict[str, str]:
    async def describe(admin):
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return {entry[0]: entry[1] for entry in response.resources[0][4]}

    return run(_with_admin(describe))


def _set(topic: str, **configs: str) -> None:
    run(_with_admin(lambda admin: incremental_alter(admin, {topic: {k.replace("_", "."): v
                                                                    for k, v in configs.items()}})))


def _partitions(topics: list[str]) -> dict[str, int]:
    async def describe(admin):
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)}

    return run(_with_admin(describe))


def test_an_operators_overrides_survive_an_apply_and_only_the_pipelines_configs_are_set(deployment):
    requests = deployment.names.requests("4_-7")
    status = deployment.names.status
    assert _configs(requests)["retention.ms"] == WEEK_MS
    _set(requests, retention_ms=HOUR_MS, segment_bytes="104857600")  # an operator's tuning
    _set(status, cleanup_policy="compact", retention_ms=HOUR_MS)  # and a config the pipeline needs, changed

    dry = _said(deployment.cli("topics", "apply", "--dry-run").stdout)
    assert f"would set {status} cleanup.policy=delete" in dry, dry
    assert f"kept {requests} retention.ms={HOUR_MS} (plan: {WEEK_MS})" in dry, dry
    assert _configs(status)["cleanup.policy"] == "compact"  # a dry run changes nothing

    applied = _said(deployment.cli("topics", "apply").stdout)
    assert f"configs {status} cleanup.policy=delete" in applied, applied
    assert "topics: 1 changed" in applied, applied
    after = _configs(requests)
    assert (after["retention.ms"], after["segment.bytes"]) == (HOUR_MS, "104857600")
    assert (_configs(status)["cleanup.policy"], _configs(status)["retention.ms"]) == ("delete", HOUR_MS)
    assert "topics: 0 changed" in deployment.cli("topics", "apply").stdout


def test_partitions_are_added_only_when_told_and_then_to_every_keyed_topic_and_changelog(deployment):
    keyed = [deployment.names.status, deployment.names.requests("4_-7"), deployment.names.locations("0_0"),
             *(deployment.names.changelog("geodispatch", table) for table in TABLES)]
    wider = {"GEODISPATCH_PARTITIONS": str(deployment.partitions + 1)}

    refused = deployment.cli("topics", "apply", check=False, **wider)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refused" in refused.stdout and "--allow-repartition" in refused.stderr
    created_only = deployment.cli("topics", "apply", "--create-only", **wider)
    assert "differs" in created_only.stdout
    assert set(_partitions(keyed).values()) == {deployment.partitions}

    deployment.cli("topics", "apply", "--allow-repartition", **wider)
    assert set(_partitions(keyed).values()) == {deployment.partitions + 1}
    assert _partitions([deployment.names.dlq]) == {deployment.names.dlq: 1}


def test_make_topics_against_given_servers_creates_what_is_missing_and_changes_nothing_else(deployment):
    status = deployment.names.status
    _set(status, cleanup_policy="compact")
    dropped = deployment.names.presence
    run(_with_admin(lambda admin: admin.delete_topics([dropped])))
    wait_for(lambda: dropped not in run(_with_admin(lambda admin: admin.list_topics())), message="topic deleted")
    env = {**deployment.env(), "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP, "REDIS_URL": deployment.redis_url}
    env.pop("MAKEFLAGS", None)
    result = subprocess.run(["make", "--no-print-directory", "topics"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--create-only" in result.stdout
    assert f"created {dropped}" in _said(result.stdout), result.stdout
    assert _configs(status)["cleanup.policy"] == "compact"
