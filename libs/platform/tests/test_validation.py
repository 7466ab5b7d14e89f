"""The request checks every RPC gets (validation.check_request) and the helpers servicers use, and
the bound on every error text."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2

from onefold.contracts.consent.v1 import consent_pb2
from onefold.contracts.identity.v1 import identity_pb2
from onefold.contracts.ingest.v1 import ingest_pb2
from onefold.platform.errors import MAX_MESSAGE_CHARS, InvalidArgument, NotFound
from onefold.platform.validation import (
    check_request,
    echo,
    id_arg,
    optional_timestamp,
    profile_ref_arg,
    timestamp_arg,
)

SOMEONE = identity_pb2.ProfileRef(profile_id="p1")


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(253_402_300_800, 0), (-62_135_596_801, 0), (0, -1), (0, 1_000_000_000), (2**62, 0)],
)
def test_out_of_range_timestamps_are_invalid_arguments_naming_the_field(seconds: int, nanos: int) -> None:
    request = identity_pb2.GetProfileRequest(profile=SOMEONE)
    request.as_of.seconds, request.as_of.nanos = seconds, nanos
    with pytest.raises(InvalidArgument) as caught:
        check_request(request)
    assert caught.value.violations[0][0] == "as_of"
    with pytest.raises(InvalidArgument):
        optional_timestamp(request, "as_of")


def test_the_whole_timestamp_range_reads_back() -> None:
    assert timestamp_arg("at", timestamp_pb2.Timestamp(seconds=-62_135_596_800)) == datetime(
        1, 1, 1, tzinfo=UTC
    )
    last = timestamp_arg("at", timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_999))
    assert last == datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert optional_timestamp(identity_pb2.GetProfileRequest(), "as_of") is None
    check_request(identity_pb2.GetProfileRequest(profile=SOMEONE, as_of=timestamp_pb2.Timestamp(seconds=0)))


def test_nested_and_repeated_fields_are_checked_with_their_paths() -> None:
    batch = consent_pb2.CheckConsentBatchRequest()
    batch.checks.add(subject=SOMEONE)
    batch.checks.add(subject=SOMEONE).at.nanos = -5
    with pytest.raises(InvalidArgument) as caught:
        check_request(batch)
    assert caught.value.violations == [("checks[1].at", caught.value.violations[0][1])]
    timeline = identity_pb2.ListTimelineRequest(profile=SOMEONE, types=[1, 99, 2, -3])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument) as caught:
        check_request(timeline)
    assert [field for field, _ in caught.value.violations] == ["types[1]", "types[3]"]


def test_unknown_enum_values_are_refused_and_unspecified_is_fine() -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_request(identity_pb2.GetProfileRequest(profile=SOMEONE, axis=99))  # type: ignore[arg-type]
    assert caught.value.violations[0] == ("axis", "is not a value of TimeAxis")
    check_request(identity_pb2.GetProfileRequest(profile=SOMEONE, axis=identity_pb2.TIME_AXIS_UNSPECIFIED))


def test_non_finite_numbers_in_structs_are_refused_outside_tracked_events() -> None:
    rectify = identity_pb2.RectifyProfileRequest(profile=SOMEONE)
    rectify.traits.update({"a": {"b": [1, float("nan")]}})
    with pytest.raises(InvalidArgument) as caught:
        check_request(rectify)
    assert caught.value.violations[0][0] == "traits.a.b[1]"
    search = identity_pb2.SearchProfilesRequest(trait="x", value=struct_pb2.Value(number_value=float("inf")))
    with pytest.raises(InvalidArgument):
        check_request(search)
    # A tracked event is ingest's to judge: it quarantines an unknown type or a NaN with the reason.
    track = ingest_pb2.TrackRequest(event=ingest_pb2.TrackingEvent(type=99))  # type: ignore[arg-type]
    track.event.properties.update({"n": float("nan")})
    check_request(track)


def test_ids_too_long_to_exist_are_not_found_and_never_echoed_whole() -> None:
    with pytest.raises(NotFound) as caught:
        id_arg("request_id", "r" * 1_000_000, "data-subject request")
    assert len(caught.value.message) < 150
    with pytest.raises(NotFound) as missing:
        profile_ref_arg("subject", identity_pb2.ProfileRef(profile_id="p" * 300))
    assert missing.value.violations[0][0] == "subject.profile_id"
    long_type = identity_pb2.ProfileRef(
        identifier=identity_pb2.Identifier(type="t" * 65, value="a@example.com")
    )
    with pytest.raises(InvalidArgument) as unreasonable:
        profile_ref_arg("profile", long_type)
    assert unreasonable.value.violations[0][0] == "profile.identifier.type"
    long_value = identity_pb2.ProfileRef(identifier=identity_pb2.Identifier(type="email", value="v@" * 600))
    with pytest.raises(NotFound) as unknown:
        profile_ref_arg("profile", long_value)
    assert "v@" not in unknown.value.message  # an identifier is personal data: never quoted
    assert profile_ref_arg("profile", SOMEONE) is SOMEONE


def test_echo_quotes_at_most_a_few_dozen_characters_escaped() -> None:
    assert echo("abc") == "'abc'"
    assert echo("a\x00b\n") == "'a\\x00b\\n'"
    assert echo("x" * 1000) == f"'{'x' * 64}…' (1000 characters)"


def test_every_status_message_and_violation_is_bounded() -> None:
    error = InvalidArgument("no profile " + "x" * 1_000_000, violations=[("f" * 5000, "d" * 5000)] * 500)
    status = error.to_status()
    assert len(status.message) == MAX_MESSAGE_CHARS and status.message.endswith("…")
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert len(bad.field_violations) == 100
    assert all(len(v.field) <= 256 and len(v.description) <= 512 for v in bad.field_violations)
