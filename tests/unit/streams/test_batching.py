"""Batch processing: outputs sent in order and counted per input type; staged table writes."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import faust
from faust.streams import current_event

from qmsflow import telemetry
from qmsflow.quality.quarantine import LotHoldState
from streams.processing import BatchOutbox, StagedWrites, handling


class FakeTopic:
    """Stands in for a Faust topic: records what was sent, acknowledges when told to."""

    def __init__(self, name: str, sent: list[tuple[str, bytes | None, bytes]]) -> None:
        self.name = name
        self.sent = sent
        self.acks: list[asyncio.Future[None]] = []

    async def send(self, *, key: bytes | None, value: bytes, headers: Any) -> Any:
        """Record the output; its ack is a future the test resolves."""
        self.sent.append((self.name, key, value))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack

    def get_topic_name(self) -> str:
        """The physical topic name."""
        return self.name


class FakeTable(dict[str, Any]):
    """A table that notes which input was current when each key was written."""

    def __init__(self) -> None:
        super().__init__()
        self.written_for: dict[str, Any] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.written_for[key] = current_event()
        super().__setitem__(key, value)


class FakeEvent:
    """An input record; Faust keeps the current one by weak reference."""

    def __init__(self, name: str) -> None:
        self.name = name


def _out_count(topic: str, event_type: str) -> float:
    value = telemetry.EVENTS_OUT.labels("test-batch", topic, event_type)._value.get()
    return float(value)


class TestBatchOutbox:
    def test_sends_in_order_and_waits_for_every_ack(self) -> None:
        """All outputs are sent before any ack is awaited; deliver returns once all are acked."""
        sent: list[tuple[str, bytes | None, bytes]] = []
        fa, fb = FakeTopic("p.a", sent), FakeTopic("p.b", sent)
        a, b = cast(faust.TopicT, fa), cast(faust.TopicT, fb)

        async def scenario() -> bool:
            out = BatchOutbox(codec=None, stage="test-batch", topic_prefix="p.")
            out.event_type = "capa"
            out.add_encoded(a, "k1", b"1")
            out.event_type = "deviation"
            out.add_encoded(b, "k2", b"2")
            out.add_encoded(a, "k3", b"3")
            delivery = asyncio.ensure_future(out.deliver())
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            waiting = not delivery.done() and len(sent) == 3  # all sent, none acked yet
            for ack in fa.acks + fb.acks:
                ack.set_result(None)
            await delivery
            return waiting

        before = _out_count("a", "deviation")
        assert asyncio.run(scenario()) is True
        assert [v for _, _, v in sent] == [b"1", b"2", b"3"]
        assert _out_count("a", "deviation") == before + 1

    def test_a_failed_ack_fails_the_batch(self) -> None:
        """If the broker refuses one output, deliver raises, so the batch is not acked."""
        sent: list[tuple[str, bytes | None, bytes]] = []
        fa = FakeTopic("p.a", sent)
        a = cast(faust.TopicT, fa)

        async def scenario() -> None:
            out = BatchOutbox(codec=None, stage="test-batch", topic_prefix="p.")
            out.add_encoded(a, None, b"1")
            delivery = asyncio.ensure_future(out.deliver())
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            fa.acks[0].set_exception(TimeoutError("no ack"))
            await delivery

        try:
            asyncio.run(scenario())
        except TimeoutError:
            return
        raise AssertionError("deliver returned although an output was not acknowledged")


class TestStagedWrites:
    def test_reads_see_earlier_writes_of_the_batch(self) -> None:
        """A later input of the batch reads what an earlier one staged, before the table has it."""
        table, writes = FakeTable(), StagedWrites()
        writes.put(table, "lot-1", {"held": True})
        assert writes.get(table, "lot-1") == {"held": True}
        assert "lot-1" not in table

    def test_an_object_is_read_back_as_staged_and_written_to_faust_as_its_dict(self) -> None:
        """A lot's hold staged as an object: the batch reads the object, the table gets JSON."""
        table, writes = FakeTable(), StagedWrites()
        hold = LotHoldState("LOT-1", "ON_HOLD", 1)
        writes.put(table, "LOT-1", hold)
        assert writes.get(table, "LOT-1") is hold
        writes.apply()
        assert table["LOT-1"] == hold.to_dict()

    def test_each_write_is_applied_for_the_input_that_staged_it(self) -> None:
        """Faust picks a key's changelog partition from the current input, so apply restores it."""
        table, writes = FakeTable(), StagedWrites()
        first, second = FakeEvent("first"), FakeEvent("second")
        handling(first)
        writes.put(table, "lot-1", 1)
        handling(second)
        writes.put(table, "lot-2", 2)
        writes.apply()
        assert table.written_for["lot-1"] is first
        assert table.written_for["lot-2"] is second
