"""The ERP adapter's errors, both dead-lettered as contract errors of the command they concern.

    QmsflowError
    └── ContractError
        ├── ErpMappingError    the command cannot be turned into a request (unknown action,
        │                      a path placeholder that is null)
        └── ErpRejectedError   the ERP answered with a permanent 4xx (the answer is kept)

A mapping file that does not validate is a plain `ConfigurationError` at start-up.
"""

from __future__ import annotations

from qmsflow.errors import ContractError


class ErpMappingError(ContractError):
    """A command the request mapping cannot express; nothing was sent to the ERP."""

    reason_code = "erp-mapping"


class ErpRejectedError(ContractError):
    """The ERP refused the command for good (a 4xx that is neither transient nor a repeat)."""

    reason_code = "erp-rejected"
