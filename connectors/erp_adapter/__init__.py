"""The ERP adapter: quarantine commands → an ERP's HTTP API, with retries and a circuit breaker.

`mapping` (pure) turns a command into a request and an answer into an outcome; `breaker` (pure)
decides when to stop calling; `delivery` retries one request behind the breaker; `adapter` is the
Kafka loop that pauses partitions while the ERP is down. See docs/erp-adapter.md.
"""

from connectors.erp_adapter.adapter import ErpAdapter, run_erp_adapter
from connectors.erp_adapter.breaker import BreakerState, CircuitBreaker
from connectors.erp_adapter.delivery import AdapterMetrics, Backoff, ErpDelivery, Verdict
from connectors.erp_adapter.mapping import (
    ErpMapping,
    ErpRequest,
    ErpResponse,
    build_request,
    classify,
    load_erp_mapping,
)
from connectors.erp_adapter.transport import ErpTransport, HttpTransport

__all__ = [
    "AdapterMetrics",
    "Backoff",
    "BreakerState",
    "CircuitBreaker",
    "ErpAdapter",
    "ErpDelivery",
    "ErpMapping",
    "ErpRequest",
    "ErpResponse",
    "ErpTransport",
    "HttpTransport",
    "Verdict",
    "build_request",
    "classify",
    "load_erp_mapping",
    "run_erp_adapter",
]
