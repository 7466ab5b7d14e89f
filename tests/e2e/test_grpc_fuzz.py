"""Every RPC of every service, fuzzed: real ingest, identity and consent processes (each also serving
PlatformService and EventLogService) get >= 10,000 authenticated calls of mutated and random request
messages, built from the request descriptors with a fixed seed: huge strings, NULs, invalid UTF-8 in
bytes fields, extreme integers, unknown enum values, out-of-range timestamps, NaN in Structs, deep
nesting, random bytes as the serialized request. No call may answer INTERNAL or UNKNOWN, or an
error sentence longer than MAX_MESSAGE_CHARS (echoed input); a failure names the RPC and the input
(call number, seed and message) that did. The processes must keep serving.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory, text_format, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from onefold.contracts.consent.v1 import consent_pb2, consent_pb2_grpc
from onefold.contracts.eventlog.v1 import eventlog_pb2
from onefold.contracts.identity.v1 import identity_pb2, identity_pb2_grpc
from onefold.contracts.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from onefold.contracts.platform.v1 import platform_pb2
from onefold.platform.auth import CredentialStore
from onefold.platform.errors import MAX_MESSAGE_CHARS, details_of
from onefold.platform.health import health_status
from onefold.platform.nats_server import NatsServerProcess
from onefold.testing.processes import ServiceProcess, peer_env

CALLS = 10_000
CONCURRENCY = 12  # calls in flight: enough to keep three servers busy on two cores
SEED = 20261205
BAD_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})

SERVICES_BY_PROCESS: dict[str, list[str]] = {
    "ingest": ["onefold.ingest.v1.IngestService"],
    "identity": ["onefold.identity.v1.IdentityService"],
    "consent": ["onefold.consent.v1.ConsentService", "onefold.consent.v1.AuditService"],
}
EVERY_PROCESS = ["onefold.platform.v1.PlatformService", "onefold.eventlog.v1.EventLogService"]
_MODULES = (consent_pb2, eventlog_pb2, identity_pb2, ingest_pb2, platform_pb2)  # loads the descriptors
POOL = descriptor_pool.Default()

# Strings that mean something to the services (so fuzzing reaches past "not found"), and nasty ones.
KNOWN_TEXT = [
    "email", "phone", "user_id", "anonymous_id", "device_id", "marketing", "analytics", "sms", "push",
    "default", "a@example.com", "+8613800138000", "u1", "anon-1", "Order Completed", "plan", "admin",
]  # fmt: skip
NASTY_TEXT = [
    "", " ", "\x00", "a\x00b", "\u202e\u0000", "💥" * 3, "'; DROP TABLE events; --", "../../etc/passwd",
    "%s%n", "\ufeff", "\r\n", "\\", "{}", "[]", "null", "-1", "9" * 40, "é" * 300,
]  # fmt: skip
EXTREME_INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**32 - 1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1]
UNKNOWN_ENUMS = [99, -1, 2**31 - 1, -(2**31), 7, 1000]
# Timestamps outside 0001-01-01 .. 9999-12-31 (seconds), and nanos outside 0 .. 999,999,999.
TIMESTAMP_SECONDS = [0, 1_700_000_000, 253_402_300_800, -62_135_596_801, 2**62, -(2**62), 4_102_444_800]
TIMESTAMP_NANOS = [0, 1, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31)]


@dataclass
class Fuzzer:
    """Half the requests are plausible with a few mutated values (so they get past the first check
    and reach the application), half are nasty throughout."""

    rng: random.Random
    known: list[str]
    keep_enabled: frozenset[str] = frozenset()
    nasty_rate: float = 0.5

    def nasty(self) -> bool:
        return self.rng.random() < self.nasty_rate

    def text(self) -> str:
        roll = self.rng.random()
        if roll < 0.35 or not self.nasty():
            return self.rng.choice(self.known)
        if roll < 0.6:
            return self.rng.choice(NASTY_TEXT)
        if roll < 0.8:
            alphabet = "abcXYZ019_-.:@ \x00\u00e9\u4e2d\U0001f600"
            return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(1, 40)))
        if roll < 0.97:
            return "x" * self.rng.choice([65, 257, 1025, 4097, 70_000])
        return "y" * 1_048_576  # a megabyte: must not come back whole in an error

    def blob(self) -> bytes:
        if not self.nasty():
            return b"\x01" * 32
        return self.rng.choice(
            [b"", b"\xff\xfe\xfd", b"\x00" * 32, self.rng.randbytes(self.rng.randint(1, 64)), b"z" * 70_000]
        )

    def number(self, field: FieldDescriptor) -> int | float | bool:
        kind = field.type
        if kind == FieldDescriptor.TYPE_BOOL:
            return self.rng.random() < 0.5
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return self.rng.choice(
                [0.0, -0.0, 1.5, float("nan"), float("inf"), -float("inf"), 1e308, -1e-320]
            )
        unsigned = kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED32,
                            FieldDescriptor.TYPE_FIXED64)  # fmt: skip
        bits = 64 if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                              FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64) else 32  # fmt: skip
        low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if not self.nasty():
            return self.rng.randint(0, 30)
        candidates = [v for v in EXTREME_INTS if low <= v <= high] + [self.rng.randint(0, 100)]
        return self.rng.choice(candidates)

    def enum(self, field: FieldDescriptor) -> int:
        if self.rng.random() < 0.3 and self.nasty():
            return self.rng.choice(UNKNOWN_ENUMS)
        return self.rng.choice([value.number for value in field.enum_type.values])

    def json_value(self, depth: int) -> object:
        roll = self.rng.random()
        if depth <= 0 or roll < 0.5:
            return self.rng.choice(
                [None, True, 1, -2.5, float("nan"), float("inf"), 2.0**60, self.text()[:100]]
            )
        if roll < 0.75:
            return [self.json_value(depth - 1) for _ in range(self.rng.randint(0, 3))]
        return {self.text()[:50]: self.json_value(depth - 1) for _ in range(self.rng.randint(0, 3))}

    def deep_json(self) -> object:
        value: object = "leaf"
        for _ in range(self.rng.choice([16, 17, 20, 31, 40])):
            value = {"a": value} if self.rng.random() < 0.7 else [value]
        return value

    def fill(self, message: Message, depth: int = 0) -> Message:
        name = message.DESCRIPTOR.full_name
        if name == "google.protobuf.Timestamp":
            nasty = self.nasty()
            message.seconds = self.rng.choice(TIMESTAMP_SECONDS if nasty else [1_700_000_000, 1_800_000_000])  # type: ignore[attr-defined]
            message.nanos = self.rng.choice(TIMESTAMP_NANOS if nasty else [0, 5000])  # type: ignore[attr-defined]
            return message
        if name == "google.protobuf.Struct":
            roll = self.rng.random()
            values = {"deep": self.deep_json()} if roll < 0.2 and self.nasty() else {
                self.text()[:40]: self.json_value(3) for _ in range(self.rng.randint(0, 4))
            }  # fmt: skip
            message.update(values)  # type: ignore[attr-defined]
            return message
        if name == "google.protobuf.Value":
            holder = message_factory.GetMessageClass(POOL.FindMessageTypeByName("google.protobuf.Struct"))()
            holder.update({"v": self.json_value(3)})  # type: ignore[attr-defined]
            message.CopyFrom(holder.fields["v"])  # type: ignore[attr-defined]
            return message
        for field in message.DESCRIPTOR.fields:
            if self.rng.random() < 0.35:
                continue
            self.set_field(message, field, depth)
        return message

    def set_field(self, message: Message, field: FieldDescriptor, depth: int) -> None:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            target = getattr(message, field.name)
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            for _ in range(self.rng.randint(0, 3)):
                key = self.scalar(key_field)
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    if depth < 4:
                        self.fill(target[key], depth + 1)
                else:
                    target[key] = self.scalar(value_field)
            return
        if field.is_repeated:
            count = self.rng.choice([0, 1, 1, 2, 3] + ([1001, 2501] if self.rng.random() < 0.01 else []))
            target = getattr(message, field.name)
            for _ in range(count):
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    if depth < 4:
                        self.fill(target.add(), depth + 1)
                else:
                    target.append(self.scalar(field))
            return
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth < 4:
                self.fill(getattr(message, field.name), depth + 1)
            return
        setattr(message, field.name, self.scalar(field))

    def scalar(self, field: FieldDescriptor) -> object:
        if field.type == FieldDescriptor.TYPE_STRING:
            return self.text()
        if field.type == FieldDescriptor.TYPE_BYTES:
            return self.blob()
        if field.type == FieldDescriptor.TYPE_ENUM:
            return self.enum(field)
        return self.number(field)

    def request(self, method: MethodDescriptor) -> bytes:
        """The serialized request: random bytes now and then, otherwise a filled-in message."""
        if self.rng.random() < 0.08:
            return self.rng.randbytes(self.rng.randint(0, 300))
        self.nasty_rate = self.rng.choice([0.03, 0.6])
        message = message_factory.GetMessageClass(method.input_type)()
        if method.name != "DisableSource":
            return self.fill(message).SerializeToString()
        known, self.known = self.known, [text for text in self.known if text not in self.keep_enabled]
        try:  # the seeded source stays enabled, so collection calls keep reaching the application
            return self.fill(message).SerializeToString()
        finally:
            self.known = known


def every_method() -> list[tuple[str, MethodDescriptor]]:
    methods = []
    for process, names in SERVICES_BY_PROCESS.items():
        for name in [*names, *EVERY_PROCESS]:
            methods += [(process, method) for method in POOL.FindServiceByName(name).methods]
    return methods


def describe(method: MethodDescriptor, body: bytes) -> str:
    """The input that failed, short enough to read: the message as text (or the raw bytes)."""
    try:
        message = message_factory.GetMessageClass(method.input_type).FromString(body)
        shown = text_format.MessageToString(message, as_one_line=True)
    except Exception:
        shown = f"bytes {body[:200].hex()}"
    shown = re.sub(r"(.)\1{15,}", lambda run: f"{run.group(1)}<x{len(run.group(0))}>", shown)
    return shown[:600] + (" ..." if len(shown) > 600 else "")


@dataclass
class Stack:
    targets: dict[str, str]
    token: str
    processes: list[ServiceProcess]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("grpc-fuzz")
    data = root / "data"
    data.mkdir()
    credentials = CredentialStore(f"sqlite:///{data / 'auth.db'}", cache_seconds=0)
    credentials.create_schema()
    admin = credentials.issue("default", ["admin"], name="fuzz").token
    service_token = credentials.issue("*", ["service"], name="onefold services").token
    credentials.engine.dispose()
    nats = NatsServerProcess(root / "nats")
    nats.start()
    # Credentials verified once a minute, not per call: the fuzz measures the handlers.
    quiet = {"ONEFOLD_AUTH__BOOTSTRAP_ADMIN": "false", "ONEFOLD_AUTH__CACHE_SECONDS": "60"}
    started: list[ServiceProcess] = []
    try:
        for name in ("ingest", "identity"):
            # identity asks ingest for the subject keys of the events it consumes
            process = ServiceProcess(name, data, nats, extra_env={**quiet, **peer_env(data, started)})
            process.start()
            started.append(process)
        peers = {f"ONEFOLD_PEERS__{p.name.upper()}": p.target for p in started}
        consent = ServiceProcess(
            "consent",
            data,
            nats,
            extra_env={**quiet, **peers, "ONEFOLD_AUTH__SERVICE_TOKEN": service_token},
        )
        consent.start()
        started.append(consent)
        yield Stack({p.name: p.target for p in started}, admin, started)
    finally:
        for process in reversed(started):
            process.stop()
        nats.stop()


async def _seed_known_ids(stack: Stack, metadata: tuple[tuple[str, str], ...]) -> list[str]:
    """Real ids for the fuzzer to use, so calls get past "not found": a source, the profiles of a
    few identified users (resolved by identity from ingest's events), a data-subject request."""
    async with grpc.aio.insecure_channel(stack.targets["ingest"]) as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        created = await ingest.CreateSource(
            ingest_pb2.CreateSourceRequest(name="fuzz", rate_limit_per_second=1_000_000), metadata=metadata
        )
        source_id = created.source.source_id
        for user in ("u1", "u2", "u3"):
            event = ingest_pb2.TrackingEvent(user_id=user)
            event.traits.update({"email": f"{user}@example.com", "plan": "pro"})
            await ingest.Identify(
                ingest_pb2.IdentifyRequest(event=event, source_id=source_id), metadata=metadata
            )
    known = [source_id]
    async with grpc.aio.insecure_channel(stack.targets["identity"]) as channel:
        identity = identity_pb2_grpc.IdentityServiceStub(channel)
        for user in ("u1", "u2", "u3"):
            request = identity_pb2.ResolveRequest(
                identifier=identity_pb2.Identifier(type="user_id", value=user)
            )
            for _ in range(200):  # identity resolves the events as they arrive over NATS
                resolved = await identity.Resolve(request, metadata=metadata)
                if resolved.found:
                    known.append(resolved.profile_id)
                    break
                await asyncio.sleep(0.05)
    async with grpc.aio.insecure_channel(stack.targets["consent"]) as channel:
        consent = consent_pb2_grpc.ConsentServiceStub(channel)
        opened = await consent.OpenRequest(
            consent_pb2.OpenRequestRequest(
                type=consent_pb2.REQUEST_TYPE_ACCESS, subject=identity_pb2.ProfileRef(profile_id=known[-1])
            ),
            metadata=metadata,
        )
        known.append(opened.request_id)
    return known


async def _fuzz(stack: Stack) -> tuple[Counter[str], list[str], int]:
    metadata = (("authorization", f"Bearer {stack.token}"),)
    seeded = await _seed_known_ids(stack, metadata)
    fuzzer = Fuzzer(random.Random(SEED), KNOWN_TEXT + seeded, keep_enabled=frozenset(seeded[:1]))
    methods = every_method()
    channels = {name: grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
                for name, target in stack.targets.items()}  # fmt: skip
    streaming_channels = {name: grpc.insecure_channel(target) for name, target in stack.targets.items()}
    codes: Counter[str] = Counter()
    failures: list[str] = []
    queue: asyncio.Queue[tuple[int, str, MethodDescriptor, list[bytes]]] = asyncio.Queue(
        maxsize=CONCURRENCY * 2
    )
    calls = 0

    async def produce() -> None:
        for number in range(CALLS):
            process, method = (
                methods[number % len(methods)] if number < len(methods) else fuzzer.rng.choice(methods)
            )
            bodies = [
                fuzzer.request(method)
                for _ in range(fuzzer.rng.randint(1, 3) if method.client_streaming else 1)
            ]
            await queue.put((number, process, method, bodies))
        for _ in range(CONCURRENCY):
            await queue.put((-1, "", methods[0], []))

    async def consume() -> None:
        nonlocal calls
        while True:
            number, process, method, bodies = await queue.get()
            if number < 0:
                return
            path = f"/{method.containing_service.full_name}/{method.name}"
            try:
                if method.client_streaming:
                    # The sync client: grpc.aio's reports its own INTERNAL ("Internal error from
                    # Core") instead of the server's status when the server ends a client stream
                    # early, as it does on a malformed message (grpc/grpc#36066).
                    upload = streaming_channels[process].stream_unary(path)
                    await asyncio.to_thread(upload, iter(bodies), metadata=metadata, timeout=30)
                else:
                    await channels[process].unary_unary(path)(bodies[0], metadata=metadata, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                details = error.details() or ""  # type: ignore[attr-defined]
                if code in BAD_CODES or len(details) > MAX_MESSAGE_CHARS:
                    failures.append(
                        f"{path} answered {code.name} ({details[:300]}) to call {number} "
                        f"(seed {SEED}): {describe(method, bodies[0])}"
                    )
            codes[f"{path}:{code.name}"] += 1
            calls += 1

    try:
        await asyncio.gather(produce(), *(consume() for _ in range(CONCURRENCY)))
    finally:
        for channel in channels.values():
            await channel.close()
        for sync_channel in streaming_channels.values():
            sync_channel.close()
    return codes, failures, calls


@pytest.mark.timeout(600)
async def test_no_rpc_answers_internal_or_unknown_to_fuzzed_requests(stack: Stack) -> None:
    codes, failures, calls = await _fuzz(stack)
    print(
        "NOOK",
        sorted(
            {k.rsplit(":", 1)[0] for k in codes} - {k.rsplit(":", 1)[0] for k in codes if k.endswith(":OK")}
        ),
    )
    assert calls >= CALLS
    assert not failures, f"{len(failures)} calls failed:\n" + "\n".join(failures[:40])
    # Every RPC was called, and answered something other than a transport failure.
    called = {key.rsplit(":", 1)[0] for key in codes}
    assert called == {f"/{m.containing_service.full_name}/{m.name}" for _, m in every_method()}
    for process in stack.processes:
        assert process.process is not None and process.process.poll() is None, f"{process.name} crashed"
        assert health_status(process.target) == "SERVING"


MEGABYTE = "x" * 1_048_576
YEAR_10000 = timestamp_pb2.Timestamp(seconds=253_402_300_800)
NEGATIVE_NANOS = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=-1)
TOO_MANY_NANOS = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=1_000_000_000)
SOMEONE = identity_pb2.ProfileRef(profile_id="p_someone")
AUDIT_CASES = [
    # (process, method, request, code, first violation's field)
    ("identity", "IdentityService/GetProfile", identity_pb2.GetProfileRequest(profile=SOMEONE, as_of=YEAR_10000),
     grpc.StatusCode.INVALID_ARGUMENT, "as_of"),
    ("identity", "IdentityService/GetProfile", identity_pb2.GetProfileRequest(profile=SOMEONE, as_of=NEGATIVE_NANOS),
     grpc.StatusCode.INVALID_ARGUMENT, "as_of"),
    ("identity", "IdentityService/GetProfile", identity_pb2.GetProfileRequest(profile=SOMEONE, axis=99),  # type: ignore[arg-type]
     grpc.StatusCode.INVALID_ARGUMENT, "axis"),
    ("identity", "IdentityService/ListTimeline", identity_pb2.ListTimelineRequest(profile=SOMEONE, since=TOO_MANY_NANOS),
     grpc.StatusCode.INVALID_ARGUMENT, "since"),
    ("identity", "IdentityService/ListTimeline", identity_pb2.ListTimelineRequest(profile=SOMEONE, types=[3, 99]),  # type: ignore[list-item]
     grpc.StatusCode.INVALID_ARGUMENT, "types[1]"),
    ("consent", "ConsentService/CheckConsent",
     consent_pb2.CheckConsentRequest(subject=SOMEONE, purpose_id="marketing", at=YEAR_10000),
     grpc.StatusCode.INVALID_ARGUMENT, "at"),
    ("consent", "AuditService/ConsentAsOf", consent_pb2.ConsentAsOfRequest(subject=SOMEONE, known_at=NEGATIVE_NANOS),
     grpc.StatusCode.INVALID_ARGUMENT, "known_at"),
    ("identity", "IdentityService/GetProfile",
     identity_pb2.GetProfileRequest(profile=identity_pb2.ProfileRef(profile_id=MEGABYTE)),
     grpc.StatusCode.NOT_FOUND, "profile.profile_id"),
    ("identity", "IdentityService/GetProfile",
     identity_pb2.GetProfileRequest(
         profile=identity_pb2.ProfileRef(identifier=identity_pb2.Identifier(type=MEGABYTE, value="a@example.com"))
     ),
     grpc.StatusCode.INVALID_ARGUMENT, "profile.identifier.type"),
    ("consent", "ConsentService/CheckConsent",
     consent_pb2.CheckConsentRequest(subject=identity_pb2.ProfileRef(profile_id=MEGABYTE), purpose_id="marketing"),
     grpc.StatusCode.NOT_FOUND, "subject.profile_id"),
    ("consent", "ConsentService/GetRequest", consent_pb2.GetRequestRequest(request_id=MEGABYTE),
     grpc.StatusCode.NOT_FOUND, "request_id"),
]  # fmt: skip


@pytest.mark.parametrize(("process", "method", "request_message", "code", "field"), AUDIT_CASES)
def test_the_audits_inputs_answer_invalid_argument_or_not_found_with_a_bounded_message(
    stack: Stack, process: str, method: str, request_message: Message, code: grpc.StatusCode, field: str
) -> None:
    package = "identity" if method.startswith("Identity") else "consent"
    with grpc.insecure_channel(stack.targets[process]) as channel:
        call = channel.unary_unary(f"/onefold.{package}.v1.{method}")
        with pytest.raises(grpc.RpcError) as refused:
            call(request_message.SerializeToString(), metadata=(("authorization", f"Bearer {stack.token}"),))
    error = refused.value
    assert error.code() == code, error.details()  # type: ignore[attr-defined]
    assert len(error.details()) <= 200, error.details()  # type: ignore[attr-defined]
    _, violations = details_of(error)
    assert violations[0][0] == field
