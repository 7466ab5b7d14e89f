"""`onefold destinations …` and the Destination documents of `onefold apply -f`, against a stand-in
for the destinations service in this process (the real service's end-to-end tests are elsewhere):
what each command asks and prints, arguments refused before any call, and the service's refusals
and errors as one sentence."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import typer
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_status import rpc_status
from typer.testing import CliRunner, Result

from onefold.cli.destinations import human_duration, parse_moment, replay_window, status_rows
from onefold.cli.main import app
from onefold.contracts.common.v1.pagination_pb2 import PageResponse
from onefold.contracts.destinations.v1 import destinations_pb2 as pb
from onefold.contracts.destinations.v1 import destinations_pb2_grpc
from onefold.platform.errors import InvalidArgument

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
WEBHOOK = """kind: Destination
name: crm
purpose: crm_sync
webhook: {url: "https://crm.example.com/hooks"}
segments: [vip]
"""


class FakeDestinations(destinations_pb2_grpc.DestinationsServiceServicer):
    """Records each request; answers what the test set in `answers`, or aborts with `refusal`."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.answers: dict[str, Any] = {}
        self.refusal: InvalidArgument | None = None

    def _answer(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        if self.refusal is not None:
            context.abort_with_status(rpc_status.to_status(self.refusal.to_status()))
        if method not in self.answers:
            context.abort(grpc.StatusCode.NOT_FOUND, "no destination named 'nope'")
        return self.answers[method]

    def ApplyDestinations(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("ApplyDestinations", request, context)

    def GetDestination(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("GetDestination", request, context)

    def ListDestinations(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("ListDestinations", request, context)

    def SetDestinationStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("SetDestinationStatus", request, context)

    def DestinationsStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("DestinationsStatus", request, context)

    def ListDeadLetters(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("ListDeadLetters", request, context)

    def Replay(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("Replay", request, context)

    def SigningSecret(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("SigningSecret", request, context)


@pytest.fixture
def service() -> Iterator[tuple[FakeDestinations, str]]:
    fake = FakeDestinations()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    destinations_pb2_grpc.add_DestinationsServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, f"127.0.0.1:{port}"
    server.stop(None)


def run(*argv: str) -> Result:
    return CliRunner().invoke(app, list(argv))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "destinations.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- apply -f ------------------------------------------------------------------------------------


def test_apply_sends_the_files_destinations_in_one_request_and_shows_a_new_secret_once(
    service: tuple[FakeDestinations, str], tmp_path: Path
) -> None:
    fake, target = service
    fake.answers["ApplyDestinations"] = pb.ApplyDestinationsResponse(
        applied=[
            pb.AppliedDestination(name="crm", version=1, changed=True, signing_secret="whsec_c2VjcmV0"),
            pb.AppliedDestination(name="warehouse", version=4, changed=False),
        ]
    )
    text = (
        WEBHOOK + "---\nkind: Destination\nname: warehouse\ntable: {url_env: DB, table: crm}\ntraits: ['*']\n"
    )
    result = run("apply", "-f", str(write(tmp_path, text)), "--destinations-target", target, "--token", "t")
    assert result.exit_code == 0, result.output
    [request] = fake.requests
    assert [d.name for d in request.destinations] == ["crm", "warehouse"] and not request.dry_run
    assert "destination/crm set (version 1)" in result.output
    assert "whsec_c2VjcmV0" in result.output
    assert "onefold destinations secret crm" in result.output
    assert "destination/warehouse unchanged (version 4)" in result.output


def test_apply_dry_run_asks_the_service_to_check_and_store_nothing(
    service: tuple[FakeDestinations, str], tmp_path: Path
) -> None:
    fake, target = service
    fake.answers["ApplyDestinations"] = pb.ApplyDestinationsResponse(
        applied=[pb.AppliedDestination(name="crm", version=2, changed=True)]
    )
    result = run(
        "apply",
        "-f",
        str(write(tmp_path, WEBHOOK)),
        "--dry-run",
        "--destinations-target",
        target,
        "--token",
        "t",
    )
    assert result.exit_code == 0, result.output
    assert fake.requests[0].dry_run
    assert "destination/crm valid (dry run)" in result.output


def test_apply_names_each_refused_field_by_destination_and_yaml_path(
    service: tuple[FakeDestinations, str], tmp_path: Path
) -> None:
    fake, target = service
    fake.refusal = InvalidArgument(
        "invalid destinations",
        violations=[
            ("destinations[0].webhook.timeout_seconds", "at most 60"),
            ("destinations[0].purpose", "no purpose named crm_sync"),
        ],
    )
    result = run(
        "apply", "-f", str(write(tmp_path, WEBHOOK)), "--destinations-target", target, "--token", "t"
    )
    assert result.exit_code == 2
    assert "destination/crm: webhook.timeout: at most 60" in result.output
    assert "destination/crm: purpose: no purpose named crm_sync" in result.output
    assert "nothing was applied" in result.output


def test_apply_refuses_a_bad_document_with_its_path_before_any_call(tmp_path: Path) -> None:
    text = WEBHOOK + "events: [{type: track, wher: []}]\n"
    result = run(
        "apply", "-f", str(write(tmp_path, text)), "--destinations-target", "127.0.0.1:1", "--token", "t"
    )
    assert result.exit_code == 2
    assert "(crm): events[0].wher is not a known key here" in " ".join(result.output.split())


def test_apply_dry_run_still_refuses_files_holding_sources(tmp_path: Path) -> None:
    text = "kind: Source\nname: web\n---\n" + WEBHOOK
    result = run("apply", "-f", str(write(tmp_path, text)), "--dry-run", "--token", "t")
    assert result.exit_code == 2
    assert "destinations only" in " ".join(result.output.split())


# --- the commands --------------------------------------------------------------------------------


def test_get_prints_the_yaml_apply_reads(service: tuple[FakeDestinations, str]) -> None:
    fake, target = service
    fake.answers["GetDestination"] = pb.Destination(
        name="crm",
        purpose="crm_sync",
        webhook=pb.Webhook(url="https://crm.example.com/hooks", timeout_seconds=5),
        segments=["vip"],
        version=3,
        status=pb.DESTINATION_STATUS_PAUSED,
    )
    result = run("destinations", "get", "crm", "--target", target, "--token", "t")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# version 3 (paused, saved ?)\n")
    assert "timeout: 5s" in result.output and "kind: Destination" in result.output
    assert fake.requests == [pb.GetDestinationRequest(name="crm")]


def test_a_missing_destination_exits_1_with_the_services_words(service: tuple[FakeDestinations, str]) -> None:
    _, target = service
    result = run("destinations", "get", "nope", "--target", target, "--token", "t")
    assert result.exit_code == 1
    assert "no destination named 'nope'" in result.output


def test_list_shows_what_flows_to_each_destination(service: tuple[FakeDestinations, str]) -> None:
    fake, target = service
    fake.answers["ListDestinations"] = pb.ListDestinationsResponse(
        destinations=[
            pb.Destination(
                name="crm",
                purpose="crm_sync",
                webhook=pb.Webhook(url="https://h"),
                events=[pb.EventFlow(type="track"), pb.EventFlow(type="identify")],
                segments=["vip"],
                traits=["email", "plan"],
                version=3,
                status=pb.DESTINATION_STATUS_ACTIVE,
            )
        ]
    )
    result = run("destinations", "list", "--archived", "--target", target, "--token", "t")
    assert result.exit_code == 0, result.output
    assert fake.requests == [pb.ListDestinationsRequest(include_archived=True)]
    assert result.output.splitlines()[1].split("\t") == [
        "crm",
        "webhook",
        "active",
        "3",
        "crm_sync",
        "2 events; segments vip; traits email, plan",
        "",
        "",
    ]


@pytest.mark.parametrize(
    ("command", "status", "word"),
    [
        ("pause", pb.DESTINATION_STATUS_PAUSED, "paused"),
        ("resume", pb.DESTINATION_STATUS_ACTIVE, "active"),
        ("archive", pb.DESTINATION_STATUS_ARCHIVED, "archived"),
    ],
)
def test_pause_resume_and_archive_set_the_status(
    service: tuple[FakeDestinations, str], command: str, status: pb.DestinationStatus.ValueType, word: str
) -> None:
    fake, target = service
    fake.answers["SetDestinationStatus"] = pb.Destination(name="crm", version=2, status=status)
    result = run("destinations", command, "crm", "--target", target, "--token", "t")
    assert result.exit_code == 0, result.output
    assert fake.requests == [pb.SetDestinationStatusRequest(name="crm", status=status)]
    assert result.output == f"destination/crm {word} (version 2)\n"


def test_status_shows_counts_lag_circuit_and_the_last_error(service: tuple[FakeDestinations, str]) -> None:
    fake, target = service
    fake.answers["DestinationsStatus"] = pb.DestinationsStatusResponse(
        destinations=[
            pb.DestinationHealth(
                name="crm",
                status=pb.DESTINATION_STATUS_ACTIVE,
                kind="webhook",
                queued=12,
                retrying=3,
                delivered=1400,
                suppressed=7,
                dead_letters=2,
                lag_seconds=245,
                last_error="HTTP 503",
                last_error_at=Timestamp(seconds=int(NOW.timestamp())),
                circuit="open",
            )
        ]
    )
    result = run("destinations", "status", "--target", target, "--token", "t")
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split("\t") == [
        "name",
        "kind",
        "status",
        "queued",
        "retrying",
        "delivered",
        "suppressed",
        "dead letters",
        "lag",
        "circuit",
        "last error",
    ]
    assert row.split("\t") == [
        "crm",
        "webhook",
        "active",
        "12",
        "3",
        "1400",
        "7",
        "2",
        "4m 05s",
        "open",
        "HTTP 503 (2026-12-06T12:00:00Z)",
    ]
    assert fake.requests == [pb.DestinationsStatusRequest()]


def test_status_rows_show_no_lag_when_nothing_waits() -> None:
    [row] = status_rows([pb.DestinationHealth(name="crm", kind="files", circuit="closed")])
    assert row[8] == "-" and row[10] == ""


def test_dead_letters_page_up_to_the_limit(service: tuple[FakeDestinations, str]) -> None:
    fake, target = service
    letter = pb.DeadLetter(
        delivery_id="dlv_1",
        profile_id="prof_1",
        kind=pb.DELIVERY_KIND_EVENT,
        name="Order Completed",
        attempts=8,
    )
    fake.answers["ListDeadLetters"] = pb.ListDeadLettersResponse(
        dead_letters=[letter, letter], page=PageResponse(next_page_token="more")
    )
    result = run(
        "destinations", "dead-letters", "crm", "--limit", "3", "--json", "--target", target, "--token", "t"
    )
    assert result.exit_code == 0, result.output
    assert [r.page.page_size for r in fake.requests] == [3, 1]
    assert fake.requests[1].page.page_token == "more"
    assert result.output.count('"delivery_id": "dlv_1"') == 3


def test_replay_since_a_duration_ago_asks_for_that_window(service: tuple[FakeDestinations, str]) -> None:
    fake, target = service
    fake.answers["Replay"] = pb.ReplayResponse(queued=42)
    before = datetime.now(UTC)
    result = run("destinations", "replay", "crm", "--since", "2h", "--target", target, "--token", "t")
    assert result.exit_code == 0, result.output
    [request] = fake.requests
    since = request.since.ToDatetime(tzinfo=UTC)
    assert before - timedelta(hours=2, seconds=5) < since <= datetime.now(UTC) - timedelta(hours=2)
    assert not request.HasField("until") and not request.dead_letters
    assert result.output.startswith("crm: 42 deliveries to deliver again (those queued from ")


def test_replay_dead_letters(service: tuple[FakeDestinations, str]) -> None:
    fake, target = service
    fake.answers["Replay"] = pb.ReplayResponse(queued=2)
    result = run("destinations", "replay", "crm", "--dead-letters", "--target", target, "--token", "t")
    assert result.exit_code == 0, result.output
    assert fake.requests == [pb.ReplayRequest(name="crm", dead_letters=True)]
    assert "crm: 2 dead letters to deliver again" in result.output


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ((), "give --since"),
        (("--since", "2h", "--dead-letters"), "not both"),
        (("--until", "1h", "--dead-letters"), "not both"),
        (("--since", "yesterday"), "ISO-8601 time"),
        (("--since", "2026-12-06T09:00:00"), "offset from UTC"),
        (("--since", "1h", "--until", "2h"), "must be after --since"),
    ],
)
def test_replay_refuses_a_wrong_window_before_any_call(argv: tuple[str, ...], complaint: str) -> None:
    result = run("destinations", "replay", "crm", *argv, "--target", "127.0.0.1:1", "--token", "t")
    assert result.exit_code == 2
    assert complaint in " ".join(result.output.replace("│", " ").split())


@pytest.mark.parametrize("rotate", [False, True])
def test_secret_shows_or_rotates_it(service: tuple[FakeDestinations, str], rotate: bool) -> None:
    fake, target = service
    fake.answers["SigningSecret"] = pb.SigningSecretResponse(secret="whsec_bmV3")
    result = run(
        "destinations", "secret", "crm", *(["--rotate"] if rotate else []), "--target", target, "--token", "t"
    )
    assert result.exit_code == 0, result.output
    assert fake.requests == [pb.SigningSecretRequest(name="crm", rotate=rotate)]
    assert "whsec_bmV3" in result.output


def test_an_unreachable_service_is_one_sentence() -> None:
    result = run("destinations", "status", "--target", "127.0.0.1:1", "--token", "t")
    assert result.exit_code == 2
    assert "cannot reach the destinations service" in result.output


# --- parsing times -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2h", NOW - timedelta(hours=2)),
        ("30m", NOW - timedelta(minutes=30)),
        ("1d12h", NOW - timedelta(hours=36)),
        ("7d", NOW - timedelta(days=7)),
        ("2026-12-06T09:00:00Z", datetime(2026, 12, 6, 9, tzinfo=UTC)),
        ("2026-12-06T17:00:00+08:00", datetime(2026, 12, 6, 9, tzinfo=UTC)),
    ],
)
def test_a_moment_is_an_iso_time_or_a_duration_ago(text: str, moment: datetime) -> None:
    assert parse_moment(text, "--since", NOW) == moment


def test_the_replay_window_of_a_range_and_of_the_dead_letters() -> None:
    assert replay_window("2h", "1h", False, NOW) == (NOW - timedelta(hours=2), NOW - timedelta(hours=1))
    assert replay_window("2h", None, False, NOW) == (NOW - timedelta(hours=2), None)
    assert replay_window(None, None, True, NOW) == (None, None)
    with pytest.raises(typer.BadParameter):
        replay_window(None, "1h", False, NOW)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45.7, "45s"), (245, "4m 05s"), (7800, "2h 10m"), (3 * 86_400 + 4 * 3600 + 5, "3d 4h")],
)
def test_lag_reads_as_people_say_it(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text
