"""Master data in every worker: the compacted `md.*` topics read whole into an in-memory index.

Like a Kafka Streams GlobalKTable: each worker assigns itself every partition of every master-data
topic from the beginning (no consumer group), so reference checks never depend on which worker
owns which product line. The agents wait for `ready` (every partition read up to the high
watermark seen at start) so that a restart does not park events whose references exist.
Parked events are released on the next tick of their partition (see streams/quality.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from qmsflow.contracts import AvroCodec
from qmsflow.errors import ContractError
from qmsflow.kafka.security import librdkafka_security
from qmsflow.quality.golden_record import EmployeeGolden
from qmsflow.quality.master_data import MASTER_TOPICS, MasterDataIndex, master_record
from qmsflow.settings import Settings

log = logging.getLogger(__name__)

EMPLOYEE_TOPIC = "md.employee.v1"
_BATCH = 1000  # records per poll; master data is small, catch-up is a few polls
_POLL_SECONDS = 0.5
_RETRY_FIRST_SECONDS = 1.0  # backoff while the broker does not answer at start-up
_RETRY_MAX_SECONDS = 15.0


class MasterDataFeed:
    """Keeps a MasterDataIndex current from the md.* topics; announces newly known entities."""

    def __init__(self, settings: Settings, codec: AvroCodec) -> None:
        self.index = MasterDataIndex()
        #: employees for signature checks (md.employee.v1), by employee id
        self.employees: dict[str, EmployeeGolden] = {}
        self.ready = asyncio.Event()
        self.applied = 0
        self._settings = settings
        self._codec = codec
        self._kinds: dict[str, str] = {
            settings.topic(topic): kind for kind, topic in MASTER_TOPICS.items()
        }
        self._kinds[settings.topic(EMPLOYEE_TOPIC)] = "employee"

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Consume until `stopping()`; blocking polls run in the default executor."""
        consumer = Consumer(
            {
                "bootstrap.servers": self._settings.bootstrap_servers,
                # required by librdkafka even with manual assignment; never committed
                "group.id": f"{self._settings.topic('qmsflow-md-reader')}-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                **librdkafka_security(self._settings),
            }
        )
        loop = asyncio.get_running_loop()
        # One thread owns the consumer: when the worker stops, this task is cancelled while a
        # poll may still run in that thread; closing from another thread then deadlocks
        # librdkafka, so the close is queued behind the poll on the same thread.
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="md-reader")
        try:
            targets = await self._assign_when_reachable(loop, thread, consumer, stopping)
            while not stopping():
                messages = await loop.run_in_executor(
                    thread, consumer.consume, _BATCH, _POLL_SECONDS
                )
                for message in messages:
                    self._apply(message)
                if not self.ready.is_set() and self._caught_up(consumer, targets):
                    log.info("master data ready: %d records applied", self.applied)
                    self.ready.set()
        finally:
            thread.submit(consumer.close)
            thread.shutdown(wait=False)

    async def _assign_when_reachable(
        self,
        loop: asyncio.AbstractEventLoop,
        thread: ThreadPoolExecutor,
        consumer: Consumer,
        stopping: Callable[[], bool],
    ) -> dict[tuple[str, int], int]:
        """Assign every partition, retrying while the broker is unreachable.

        A worker that starts (or restarts) during a broker outage must wait for the broker,
        not crash: the watermark query is the one call here that needs it to answer.
        """
        delay = _RETRY_FIRST_SECONDS
        while True:
            try:
                return await loop.run_in_executor(thread, self._assign_all, consumer)
            except KafkaException as error:
                if stopping():
                    raise
                log.warning("master data: broker not answering (%s); retry in %.0f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_SECONDS)

    def _assign_all(self, consumer: Consumer) -> dict[tuple[str, int], int]:
        metadata = consumer.list_topics(timeout=30).topics
        partitions = [
            TopicPartition(topic, p, OFFSET_BEGINNING)
            for topic in self._kinds
            if topic in metadata
            for p in metadata[topic].partitions
        ]
        # the ends first: asked after assign(), each query waited behind the fetchers that
        # assign() starts, ~0.4 s a partition (6 s of a worker's start-up for 15 partitions)
        targets = {}
        for tp in partitions:
            _, high = consumer.get_watermark_offsets(tp, timeout=30)
            targets[(tp.topic, tp.partition)] = high
        consumer.assign(partitions)
        return targets

    def _caught_up(self, consumer: Consumer, targets: dict[tuple[str, int], int]) -> bool:
        positions = consumer.position(
            [TopicPartition(topic, partition) for topic, partition in targets]
        )
        reached = {(tp.topic, tp.partition): tp.offset for tp in positions}
        return all(high == 0 or reached.get(key, -1) >= high for key, high in targets.items())

    def _apply(self, message: Message) -> None:
        if message.error() is not None:
            log.error("master-data consume error: %s", message.error())
            return
        topic = message.topic() or ""
        kind = self._kinds[topic]
        entity_id = (message.key() or b"").decode("utf-8")
        value = message.value()
        if kind == "employee":
            self._apply_employee(topic, entity_id, value, message)
            return
        try:
            datum = (
                None
                if value is None
                else self._codec.decode(
                    value, f"{topic.removeprefix(self._settings.topic_prefix)}-value"
                ).record
            )
            self.index.apply(kind, entity_id, master_record(kind, datum))
        except ContractError as error:
            # Master data is ours (CDC output); a bad record is logged, never guessed at.
            log.error(
                "master-data record %s[%s]@%s rejected: %s",
                topic,
                message.partition(),
                message.offset(),
                error,
            )
            return
        self.applied += 1

    def _apply_employee(
        self, topic: str, employee_id: str, value: bytes | None, message: Message
    ) -> None:
        if value is None:
            self.employees.pop(employee_id, None)
            return
        subject = f"{topic.removeprefix(self._settings.topic_prefix)}-value"
        try:
            self.employees[employee_id] = EmployeeGolden.from_avro(
                self._codec.decode(value, subject).record
            )
        except (ContractError, KeyError, ValueError) as error:
            log.error(
                "employee record %s[%s]@%s rejected: %s",
                topic,
                message.partition(),
                message.offset(),
                error,
            )
            return
        self.applied += 1
