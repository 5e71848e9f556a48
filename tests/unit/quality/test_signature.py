"""Electronic signatures checked against the signer's employee golden record and the rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from qmsflow.errors import ConfigurationError
from qmsflow.quality.event import QualityEvent
from qmsflow.quality.golden_record import EmployeeGolden, Training
from qmsflow.quality.signature import (
    SignatureVerdict,
    check_signature,
    load_signature_rules,
    parse_signature_rules,
)

RULES = load_signature_rules()
SIGNED_AT = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def _event(
    event_type: str = "nonconformance",
    meaning: str = "approval",
    signer: str = "E2004",
    printed_name: str = "Jane Roe",
    signed: bool = True,
) -> QualityEvent:
    signature = (
        {
            "signer_id": signer,
            "printed_name": printed_name,
            "signed_at": SIGNED_AT,
            "meaning": meaning,
        }
        if signed
        else None
    )
    return cast(QualityEvent, {"event_type": event_type, "signature": signature})


def _employee(**overrides: Any) -> EmployeeGolden:
    values: dict[str, Any] = {
        "employee_id": "E2004",
        "printed_name": "Jane Roe",
        "site": "BER",
        "active": True,
        "roles": ("qa_approver",),
        "trainings": (
            Training(
                "SOP-QA-011", datetime(2026, 1, 5, tzinfo=UTC), datetime(2027, 1, 5, tzinfo=UTC)
            ),
        ),
        "updated_at": datetime(2026, 1, 5, tzinfo=UTC),
        "source_system": "HR",
    }
    values.update(overrides)
    return EmployeeGolden(**values)


class TestValid:
    def test_active_role_and_current_training(self) -> None:
        """An active signer with an allowed role and current training signs validly."""
        verdict = check_signature(_event(), _employee(), RULES)
        assert verdict == SignatureVerdict("valid") and verdict.valid and verdict.applicable

    def test_training_without_expiry(self) -> None:
        """A training without expiry stays current."""
        trainings = (Training("SOP-QA-011", datetime(2020, 1, 1, tzinfo=UTC), None),)
        assert check_signature(_event(), _employee(trainings=trainings), RULES).valid

    def test_retraining_covers_an_expired_record(self) -> None:
        """A later retraining makes the course current again."""
        trainings = (
            Training(
                "SOP-QA-011", datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)
            ),
            Training("SOP-QA-011", datetime(2026, 6, 1, tzinfo=UTC), None),
        )
        assert check_signature(_event(), _employee(trainings=trainings), RULES).valid

    def test_unsigned_event_is_not_applicable(self) -> None:
        """An event without a signature is not judged."""
        verdict = check_signature(_event(signed=False), None, RULES)
        assert verdict.status == "not_applicable" and not verdict.applicable


class TestInvalid:
    def test_unknown_signer(self) -> None:
        """A signer master data does not know is named."""
        verdict = check_signature(_event(), None, RULES)
        assert verdict.problems == ("signer E2004 is not a known employee",)

    def test_inactive_signer(self) -> None:
        """An inactive signer is named."""
        verdict = check_signature(_event(), _employee(active=False), RULES)
        assert verdict.problems == ("signer E2004 is not an active employee",)

    def test_role_not_allowed(self) -> None:
        """A CAPA approval needs qa_manager; a qa_approver is refused."""
        trainings = (Training("SOP-QA-020", datetime(2026, 1, 1, tzinfo=UTC), None),)
        verdict = check_signature(_event("capa"), _employee(trainings=trainings), RULES)
        assert verdict.problems == (
            "signer E2004 holds none of the roles allowed to sign a capa for approval "
            "(qa_manager); has qa_approver",
        )

    def test_expired_training(self) -> None:
        """Training expired before signing is named with its expiry."""
        trainings = (
            Training(
                "SOP-QA-011", datetime(2025, 10, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC)
            ),
        )
        verdict = check_signature(_event(), _employee(trainings=trainings), RULES)
        assert verdict.problems == (
            "signer E2004 was not trained on SOP-QA-011 at 2026-11-02T10:00Z (expired 2026-10-01)",
        )

    def test_training_completed_after_signing(self) -> None:
        """Training completed only after signing does not count."""
        trainings = (Training("SOP-QA-011", datetime(2026, 11, 3, 8, 30, tzinfo=UTC), None),)
        verdict = check_signature(_event(), _employee(trainings=trainings), RULES)
        assert verdict.problems == (
            "signer E2004 was not trained on SOP-QA-011 at 2026-11-02T10:00Z "
            "(completed later, 2026-11-03T08:30Z)",
        )

    def test_missing_training(self) -> None:
        """No training record for the required course is named."""
        verdict = check_signature(_event(), _employee(trainings=()), RULES)
        assert verdict.problems == ("signer E2004 has no training record for SOP-QA-011",)

    def test_meaning_without_rule(self) -> None:
        """A meaning no rule allows for the event type is refused, not assumed."""
        verdict = check_signature(_event("recall", "approval"), _employee(), RULES)
        assert verdict.problems == ("no rule allows signing a recall with meaning 'approval'",)

    def test_printed_name_mismatch(self) -> None:
        """A manifestation whose printed name is not the signer's is named (§11.50)."""
        verdict = check_signature(_event(printed_name="J. Doe"), _employee(), RULES)
        assert verdict.problems == (
            "signature shows printed name 'J. Doe', but signer E2004 is 'Jane Roe' (§11.50)",
        )

    def test_every_failure_is_listed(self) -> None:
        """Several failures are all reported, and the verdict is invalid."""
        verdict = check_signature(
            _event("lab_result", "review"), _employee(active=False, trainings=()), RULES
        )
        assert verdict.status == "invalid" and len(verdict.problems) == 3


class TestRules:
    def test_duplicate_pair_is_refused(self) -> None:
        """Two rules for one event type and meaning are a ConfigurationError."""
        rule = {"event_type": "capa", "meanings": ["Approval"], "roles": ["qa_manager"]}
        with pytest.raises(ConfigurationError, match="two rules"):
            parse_signature_rules({"version": 1, "signing": [rule, rule]})

    def test_words_are_matched_in_lookup_form(self) -> None:
        """Roles and meanings in the rules are case- and separator-insensitive."""
        rules = parse_signature_rules(
            {
                "version": 1,
                "signing": [
                    {"event_type": "capa", "meanings": ["Approval"], "roles": ["QA Manager"]}
                ],
            }
        )
        verdict = check_signature(
            _event("capa", "APPROVAL"), _employee(roles=("qa-manager",)), rules
        )
        assert verdict.valid


class TestSignatureCheckRecord:
    def _full_event(self) -> QualityEvent:
        event = dict(_event())
        event.update(
            event_id="0f5a3a52-7c1e-4d6b-9a0e-3b8f2c4d5e61",
            source_system="QMS",
            source_record_id="NCR-1042",
            product_line="catheters",
            recorded_at=datetime(2026, 11, 2, 10, 0, 5, tzinfo=UTC),
        )
        return cast(QualityEvent, event)

    def test_record_matches_its_contract(self) -> None:
        """The verdict record validates against quality.signature-checks.v1-value."""
        import json

        from fastavro import parse_schema
        from fastavro.validation import validate

        from qmsflow.quality.signature import signature_check_record
        from qmsflow.settings import PROJECT_ROOT

        path = PROJECT_ROOT / "schemas/avro/quality.signature-checks.v1-value/v1.avsc"
        schema = parse_schema(json.loads(path.read_text()))
        event = self._full_event()
        record = signature_check_record(event, check_signature(event, None, RULES))
        assert validate(record, schema, strict=True)
        assert record["status"] == "invalid" and record["problems"]

    def test_same_event_same_record(self) -> None:
        """Checking an event twice (a replay) gives the identical record, id included."""
        from qmsflow.quality.signature import signature_check_record

        event = self._full_event()
        first = signature_check_record(event, check_signature(event, _employee(), RULES))
        second = signature_check_record(event, check_signature(event, _employee(), RULES))
        assert first == second and first["status"] == "valid"
