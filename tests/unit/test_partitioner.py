"""Java-compatible partitioning of product-line keys."""

import pytest

from qmsflow.partitioner import murmur2, partition_for

# Hashes printed by org.apache.kafka.common.utils.Utils.murmur2 (kafka-clients 4.1.1); the first
# six are also the vectors of Kafka's own UtilsTest.testMurmur2.
JAVA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
    (b"infusion-pumps", -152677921),
    (b"", 275646681),
]

# (key, partitions, partition) from Utils.toPositive(murmur2(key)) % partitions in Java.
JAVA_PARTITIONS = [
    ("infusion-pumps", 6, 1),
    ("infusion-pumps", 12, 7),
    ("catheters", 6, 0),
    ("sterile-injectables", 6, 2),
    ("diagnostic-kits", 12, 8),
    ("a-little-bit-longer-string", 6, 5),
]


class TestMurmur2:
    @pytest.mark.parametrize(("data", "expected"), JAVA_MURMUR2)
    def test_matches_java(self, data: bytes, expected: int) -> None:
        """The hash equals Java's Utils.murmur2 bit for bit, signed."""
        assert murmur2(data) == expected


class TestPartitionFor:
    @pytest.mark.parametrize(("key", "partitions", "expected"), JAVA_PARTITIONS)
    def test_matches_java_producer(self, key: str, partitions: int, expected: int) -> None:
        """A product line lands on the partition the Java producer would choose."""
        assert partition_for(key, partitions) == expected

    def test_rejects_zero_partitions(self) -> None:
        """A topic without partitions is a configuration error, not a modulo by zero."""
        with pytest.raises(ValueError, match="at least one partition"):
            partition_for("catheters", 0)


def test_a_long_key_is_partitioned_but_not_remembered() -> None:
    """A producer's megabyte keys must not pile up in the partition cache."""
    from qmsflow.partitioner import CACHED_KEY_BYTES, _remembered_partition

    long_key = b"x" * (CACHED_KEY_BYTES + 1)
    before = _remembered_partition.cache_info().currsize
    assert partition_for(long_key, 6) == (murmur2(long_key) & 0x7FFFFFFF) % 6
    assert _remembered_partition.cache_info().currsize == before
    assert partition_for(b"catheters", 6) == partition_for("catheters", 6)
