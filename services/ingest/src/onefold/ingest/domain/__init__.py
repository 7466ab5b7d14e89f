"""The ingest domain, free of I/O: Segment calls parsed and checked into canonical events, tracking
plans, verdicts, dedupe, and the conversions to the onefold.ingest.v1 messages the log records.

The service layer's path for one request:

    parsed = parse_request(body, "batch", received_at=now, source_id=src)   # or parse_batch_request(pb)
    plan = plans.get(tracking_plan)                                         # PlanCache
    for intake in parsed.intakes:
        verdict = decide(intake, plan)
        ...  # dedupe on intake.message_id, append accepted_record / quarantined_record, answer ack(...)
"""

from onefold.ingest.domain.dedupe import first_sightings
from onefold.ingest.domain.model import (
    DEFAULT_LIMITS,
    MAX_NESTING_DEPTH,
    CallType,
    CanonicalEvent,
    Consent,
    Disposition,
    FailureKind,
    Intake,
    Limits,
    ParsedRequest,
    PayloadTooLarge,
    Verdict,
    Violation,
    field_path,
)
from onefold.ingest.domain.protos import (
    accepted_record,
    ack,
    event_from_proto,
    intake_from_quarantined,
    parse_batch_request,
    parse_tracking_event,
    plan_from_proto,
    quarantined_record,
    to_proto,
)
from onefold.ingest.domain.segment import (
    BatchDefaults,
    parse_event,
    parse_request,
    raise_if_undeliverable,
    to_json,
)
from onefold.ingest.domain.tracking_plan import CompiledPlan, PlanCache, PlanMode, TrackingPlan, decide

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_NESTING_DEPTH",
    "BatchDefaults",
    "CallType",
    "CanonicalEvent",
    "CompiledPlan",
    "Consent",
    "Disposition",
    "FailureKind",
    "Intake",
    "Limits",
    "ParsedRequest",
    "PayloadTooLarge",
    "PlanCache",
    "PlanMode",
    "TrackingPlan",
    "Verdict",
    "Violation",
    "accepted_record",
    "ack",
    "decide",
    "event_from_proto",
    "field_path",
    "first_sightings",
    "intake_from_quarantined",
    "parse_batch_request",
    "parse_event",
    "parse_request",
    "parse_tracking_event",
    "plan_from_proto",
    "quarantined_record",
    "raise_if_undeliverable",
    "to_json",
    "to_proto",
]
