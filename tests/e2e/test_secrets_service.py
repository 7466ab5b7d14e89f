"""Secrets and files, through real service processes: a private data dir (also for an upgraded
installation), the warning for a key beside the data, and denied requests logged — once per denial,
bounded under a flood, without the presented secret."""

from __future__ import annotations

import json
import math
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx

from onefold.contracts.eventlog.v1 import eventlog_pb2
from onefold.contracts.platform.v1 import platform_pb2
from onefold.platform.auth import CredentialStore
from onefold.platform.ports import free_port
from onefold.testing.processes import ServiceProcess

WHO_AM_I = "/onefold.platform.v1.PlatformService/WhoAmI"
VERIFY = "/onefold.eventlog.v1.EventLogService/Verify"
PER_MINUTE = 10  # DenialLog's default


def assert_private(root: Path) -> None:
    """Every directory under `root` (and root) 0700, every file 0600."""
    assert stat.S_IMODE(root.stat().st_mode) == 0o700, root
    for path in root.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            continue
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {oct(mode)}"


def log_lines(service: ServiceProcess) -> list[dict[str, Any]]:
    lines = []
    for line in service.log_path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def denials(service: ServiceProcess, where: str, reason: str) -> list[dict[str, Any]]:
    return [
        line
        for line in log_lines(service)
        if line.get("event") == "auth.denied" and line.get("where") == where and line.get("reason") == reason
    ]


def call(
    target: str, method: str, request: Any, response: Any, metadata: list[tuple[str, str]]
) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        stub = channel.unary_unary(
            method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        try:
            stub(request, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def who_am_i(target: str, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    return call(target, WHO_AM_I, platform_pb2.WhoAmIRequest(), platform_pb2.WhoAmIResponse, metadata)


def bearer(token: str, workspace: str | None = None) -> list[tuple[str, str]]:
    metadata = [("authorization", f"Bearer {token}")]
    return [*metadata, ("x-onefold-workspace", workspace)] if workspace else metadata


def test_an_upgraded_data_dir_becomes_private_and_a_key_beside_the_data_is_a_warning(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    data = tmp_path / "data"
    # What an older version left: world-readable directories and files.
    (data / "logs").mkdir(parents=True)
    (data / "keys").mkdir()
    (data / "logs" / "old.log").write_text("old")
    for path in (data, data / "logs", data / "keys"):
        path.chmod(0o755)
    (data / "logs" / "old.log").chmod(0o644)
    consent = start_service("consent", data_dir=data)
    assert_private(data)  # including the databases, their -wal/-shm, auth.db and the key file
    assert {p.name for p in data.iterdir()} >= {"consent.db", "auth.db", "keys"}
    assert (data / "keys" / "consent.kek").exists()
    warned = [line for line in log_lines(consent) if line.get("event") == "eventlog.key_beside_data"]
    assert len(warned) == 1 and warned[0]["level"] == "warning"
    assert (data / "keys" / "consent.kek").read_text().strip() not in consent.log_path.read_text()


def test_a_key_outside_the_data_dir_gives_no_warning(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    keys = tmp_path / "secret-mount"
    segments = start_service("segments", onefold_eventlog__key_file=str(keys / "segments.kek"))
    assert (keys / "segments.kek").exists() and stat.S_IMODE((keys / "segments.kek").stat().st_mode) == 0o600
    assert not [line for line in log_lines(segments) if line.get("event") == "eventlog.key_beside_data"]


def test_denied_grpc_calls_are_logged_once_each_and_a_flood_is_bounded(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = CredentialStore(f"sqlite:///{data / 'auth.db'}", cache_seconds=0)
    store.create_schema()
    acme_admin = store.issue("acme", ["admin"], "acme admin")
    reader = store.issue("acme", ["profiles:read"], "reader")
    store.engine.dispose()
    service = start_service("segments", data_dir=data, onefold_auth__bootstrap_admin="false")
    target = service.target

    forged = f"ofk_{acme_admin.id}_{'x' * 43}"
    cases = [
        (who_am_i(target, []), "CREDENTIAL_MISSING", WHO_AM_I),
        (who_am_i(target, bearer(forged)), "CREDENTIAL_INVALID", WHO_AM_I),
        (who_am_i(target, bearer(reader.token, "globex")), "WORKSPACE_MISMATCH", WHO_AM_I),
        (
            call(
                target,
                VERIFY,
                eventlog_pb2.VerifyRequest(),
                eventlog_pb2.VerifyResponse,
                bearer(acme_admin.token),
            ),
            "SCOPE_MISSING",
            VERIFY,
        ),
    ]
    expected_codes = {
        "CREDENTIAL_MISSING": grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIAL_INVALID": grpc.StatusCode.UNAUTHENTICATED,
    }
    for code, reason, method in cases:
        assert code == expected_codes.get(reason, grpc.StatusCode.PERMISSION_DENIED), reason
        [line] = denials(service, method, reason)
        assert line["level"] == "warning" and line["service"] == "segments"
    # The caller is named by credential id once it authenticated; never by its secret.
    [scope_line] = denials(service, VERIFY, "SCOPE_MISSING")
    assert scope_line["credential_id"] == acme_admin.id
    log_text = service.log_path.read_text()
    for secret in (forged, acme_admin.token, reader.token, "x" * 43):
        assert secret not in log_text

    # A flood: a bounded number of lines per (reason, method) and minute, the rest counted.
    started = time.monotonic()
    flood = 300
    for _ in range(flood):
        assert who_am_i(target, bearer(forged)) == grpc.StatusCode.UNAUTHENTICATED
    minutes = math.ceil((time.monotonic() - started) / 60) + 1  # windows the flood can touch
    lines = denials(service, WHO_AM_I, "CREDENTIAL_INVALID")
    assert len(lines) <= PER_MINUTE * minutes < flood + 1
    assert len(lines) == PER_MINUTE or minutes > 1  # the first minute's lines, then silence
    # Allowed calls are not logged as denials.
    assert who_am_i(target, bearer(reader.token)) == grpc.StatusCode.OK
    assert len(denials(service, WHO_AM_I, "CREDENTIAL_INVALID")) == len(lines)


def test_refused_write_keys_at_ingest_are_logged_without_the_key(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    http_port = free_port()
    ingest = start_service("ingest", onefold_http__port=str(http_port))
    url = f"http://127.0.0.1:{http_port}/v1/track"
    guessed = "wk_guessed-write-key-0123456789"
    answers = [
        httpx.post(url, json={"event": "x", "userId": "u"}, timeout=10).status_code,
        httpx.post(url, json={"event": "x", "userId": "u"}, auth=(guessed, ""), timeout=10).status_code,
    ]
    assert answers == [401, 401]
    refused = [
        line
        for line in log_lines(ingest)
        if line.get("event") == "auth.denied" and line["where"] == "/v1/track"
    ]
    assert {line["reason"] for line in refused} == {"CREDENTIAL_MISSING", "CREDENTIAL_INVALID"}
    assert all(line["status"] == 401 for line in refused) and len(refused) == 2
    assert guessed not in ingest.log_path.read_text()
