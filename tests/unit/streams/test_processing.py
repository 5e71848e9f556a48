"""The agents' retry policy: what counts as transient, and how patiently it is retried."""

from aiokafka.errors import (
    KafkaTimeoutError,
    NotLeaderForPartitionError,
)

from qmsflow.errors import EncodeError
from streams.processing import RetryPolicy, is_transient


class TestTransient:
    def test_kafka_retriable_errors_are_transient(self) -> None:
        """A moved leader or a request timeout is worth another try."""
        assert is_transient(NotLeaderForPartitionError())
        assert is_transient(KafkaTimeoutError())

    def test_lost_connections_and_timeouts_are_transient(self) -> None:
        """The network failing is worth another try."""
        assert is_transient(ConnectionResetError())
        assert is_transient(TimeoutError())

    def test_bugs_and_contract_errors_are_not(self) -> None:
        """Retrying a bug or a broken contract only delays the crash."""
        assert not is_transient(EncodeError("payload.x expects int"))
        assert not is_transient(KeyError("event_id"))


class TestRetryPolicy:
    def test_backoff_doubles(self) -> None:
        """Delays grow exponentially from the first one."""
        assert RetryPolicy(attempts=4, first_delay=0.5).delays() == [0.5, 1.0, 2.0]

    def test_default_outlasts_a_leader_election(self) -> None:
        """The default budget waits longer than a typical broker failover (about 10 s)."""
        assert sum(RetryPolicy().delays()) > 10
