"""Feature toggles against the real broker: a switch reaches a running ERP adapter, nothing lost."""

from __future__ import annotations

import time
from threading import Event, Thread

import pytest

from connectors.erp_adapter.adapter import COMMANDS_TOPIC, ERP_OUTBOUND, ErpAdapter
from qmsflow.kafka.admin import create_topics
from qmsflow.settings import Settings
from qmsflow.toggles import TOGGLES_TOPIC, ToggleReader, publish_toggle, read_toggles, switch
from qmsflow.topics import TopicCatalog, load_catalog
from tests.integration.pipeline import wait_for
from tests.integration.test_erp_adapter import BURST, ErpStandIn, erp, produce_burst

pytestmark = pytest.mark.integration

__all__ = ["erp"]  # the stand-in ERP fixture, shared with test_erp_adapter


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str, erp: ErpStandIn) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        erp_base_url=erp.base_url,
        erp_timeout=2.0,
        erp_retry_backoff=0.05,
        erp_retry_backoff_max=0.4,
    )
    catalog = load_catalog()
    only = TopicCatalog(
        topics=(catalog[COMMANDS_TOPIC], catalog["quality.dlq.v1"], catalog[TOGGLES_TOPIC])
    )
    create_topics(settings, only, echo=lambda _line: None)
    return settings


def _switch(settings: Settings, enabled: bool) -> None:
    toggle = switch(ERP_OUTBOUND, enabled, changed_by="test", reason="toggle test")
    publish_toggle(settings, toggle)


class TestErpOutboundToggle:
    def test_switched_off_holds_commands_and_switched_on_delivers_each_once(
        self, settings: Settings, erp: ErpStandIn
    ) -> None:
        """Off: the running adapter posts nothing; on again: every hold is posted exactly once."""
        _switch(settings, False)
        reader = ToggleReader(settings).start()
        stop = Event()
        try:
            wait_for(lambda: not reader.enabled(ERP_OUTBOUND), timeout=20, what="the switch off")
            adapter = ErpAdapter(settings, stop=stop, toggles=reader.enabled)
            thread = Thread(target=adapter.run, daemon=True)
            thread.start()
            produce_burst(settings)
            time.sleep(4)
            assert erp.posted() == 0, "a switched-off integration called the ERP"

            _switch(settings, True)
            wait_for(lambda: erp.posted() >= BURST, timeout=60, what=f"{BURST} holds posted")
            time.sleep(1)
            assert set(erp.applied.values()) == {1}
            assert erp.posted() == BURST
            assert read_toggles(settings).enabled(ERP_OUTBOUND)
        finally:
            stop.set()
            reader.stop()
