"""Our key partitioning is Kafka's: the same partition as aiokafka's and the Java client's."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from streams.routing import key_partition, misrouted, partition_key


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=1, max_value=256))
def test_key_partition_is_aiokafkas_default_partitioner(key, partitions):
    everything = list(range(partitions))
    assert key_partition(key, partitions) == DefaultPartitioner()(key, everything, everything)


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_driver_ids_partition_like_aiokafka(driver_id, partitions):
    key = driver_id.encode()
    everything = list(range(partitions))
    assert key_partition(key, partitions) == DefaultPartitioner()(key, everything, everything)


# The Java client's own murmur2 test vectors (Kafka's UtilsTest), as signed 32-bit results.
@pytest.mark.parametrize(
    ("key", "java"),
    [(b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536), (b"abc", 479470107)],
)
def test_java_murmur2_vectors(key, java):
    assert key_partition(key, 1000) == (java & 0x7FFFFFFF) % 1000


def test_misrouted():
    home = key_partition(b"drv_7", 4)
    assert misrouted(b"drv_7", home, 4) is None
    assert misrouted(b"drv_7", (home + 1) % 4, 4) == home
    assert misrouted(None, 3, 4) is None and misrouted(b"", 3, 4) is None


@given(st.integers(min_value=1, max_value=64), st.data())
def test_a_partition_key_lands_on_its_partition(partitions, data):
    partition = data.draw(st.integers(min_value=0, max_value=partitions - 1))
    key = partition_key("heartbeat_sweep", partition, partitions)
    assert key.startswith("heartbeat_sweep-")
    assert key_partition(key.encode(), partitions) == partition
    assert misrouted(key.encode(), partition, partitions) is None
