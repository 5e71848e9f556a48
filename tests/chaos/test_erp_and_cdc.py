"""Scenario 11: an ERP outage during holds, and Kafka Connect restarts mid-CDC, on the chaos stack.

The scenarios are the integration tests that already prove them, collected here so that
`make chaos` runs them against the chaos stack (this directory's `kafka_bootstrap` and
`postgres_dsn` fixtures): the ERP stand-in stopped for 30 s during a burst of 200 holds (each
posted exactly once, in partition order), and the CDC source edited continuously while the test's
own Connect worker is stopped, killed and the stream worker killed (one golden version per
committed change). Their own assertions are their ledgers.
"""

from __future__ import annotations

import pytest

from tests.integration.test_cdc_end_to_end import TestRestarts as TestCdcRestarts
from tests.integration.test_cdc_end_to_end import env as env
from tests.integration.test_erp_adapter import TestErpOutage as TestErpOutage
from tests.integration.test_erp_adapter import erp as erp
from tests.integration.test_erp_adapter import settings as settings

pytestmark = pytest.mark.integration

__all__ = ["TestCdcRestarts", "TestErpOutage", "env", "erp", "settings"]
