"""Java Kafka's default partitioner (murmur2), so every client puts a product line on one partition.

librdkafka's default is CRC32 (`consistent_random`); confluent-kafka producers must set
`partitioner=murmur2_random` to agree with this module, aiokafka and the Java clients.
"""

from __future__ import annotations

from functools import lru_cache

_SEED = 0x9747B28C  # the seed Kafka's Utils.murmur2 uses
_M = 0x5BD1E995
_R = 24
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Return Kafka's `Utils.murmur2(data)` as a signed 32-bit int (same bits as Java)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    full = length - length % 4
    for i in range(0, full, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> _R
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = length % 4
    if tail == 3:
        h ^= data[full + 2] << 16
    if tail >= 2:
        h ^= data[full + 1] << 8
    if tail >= 1:
        h ^= data[full]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


#: longest key whose partition is remembered: keys come from producers before any limit is
#: checked, and 4,096 remembered 1 MiB keys would hold 4 GiB
CACHED_KEY_BYTES = 256


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition Java's producer picks for a keyed record: toPositive(murmur2(key)) % n."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, got {partitions}")
    if len(key) <= CACHED_KEY_BYTES:
        return _remembered_partition(key, partitions)
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=4096)  # keys are product lines: a few dozen, hashed in Python per record
def _remembered_partition(key: str | bytes, partitions: int) -> int:
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions
