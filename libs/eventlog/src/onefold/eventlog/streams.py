"""JetStream topology: which stream holds a service's events, which subject an event goes to.

One stream per producing service, `ONEFOLD_<SERVICE>`, capturing its events, which travel on
`onefold.<service>.<kind>.<workspace>.<partition>`:

- `kind` is the short name of the event's protobuf type (`ConsentGranted`), so a consumer may filter
  by type on the server;
- `partition` is a stable hash (CRC-32) of the partition key mod P. The key is the event's
  `partition_key` metadata (the producer sets it to the profile key) or else its stream id, so one
  person's events stay in one partition and keep their order while consumers scale out by partition.

Poison events go to `ONEFOLD_DLQ` on `onefold.dlq.<service>.<upstream>`. Signed chain digests go to
`onefold.<service>.digest`, captured by the one witness stream `ONEFOLD_WITNESS` (no age limit, no
deletes, no purges: see digests.py). The three kinds of subject have 5, 4 and 3 tokens, so the
streams' subjects never overlap (JetStream refuses overlapping streams).

Everything here is create-or-update and safe to run at every start, from every replica.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from onefold.platform.telemetry import get_logger

log = get_logger("onefold.eventlog.streams")

SUBJECT_ROOT = "onefold"
DLQ_STREAM = "ONEFOLD_DLQ"
DLQ_SUBJECTS = f"{SUBJECT_ROOT}.dlq.*.*"
WITNESS_STREAM = "ONEFOLD_WITNESS"
WITNESS_SUBJECTS = f"{SUBJECT_ROOT}.*.digest"
PARTITION_KEY = "partition_key"
DEFAULT_PARTITIONS = 16

# NATS subject tokens may not contain separators, wildcards or whitespace, and names (streams,
# consumers) may not contain path separators either: both keep only letters, digits, _ and -.
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


@dataclass(frozen=True)
class StreamSettings:
    """Bus stream limits. The bus is transport, not the record: each service's own log is."""

    max_age_seconds: float = 7 * 24 * 3600.0
    duplicate_window_seconds: float = 120.0  # how long a re-published event_id is recognised
    replicas: int = 1  # 3 on the Kubernetes NATS cluster
    max_bytes: int = -1
    partitions: int = DEFAULT_PARTITIONS
    # Atomic batches let the relay store up to 1000 events per round trip and fsync (nats-server 2.12+).
    allow_atomic: bool = True

    @classmethod
    def from_config(cls, eventlog: BusConfig) -> StreamSettings:
        """From the service's `eventlog` settings section (partitions, bus_max_age_hours, bus_replicas)."""
        return cls(
            max_age_seconds=eventlog.bus_max_age_hours * 3600.0,
            replicas=eventlog.bus_replicas,
            partitions=eventlog.partitions,
        )


class BusConfig(Protocol):
    partitions: int
    bus_max_age_hours: float
    bus_replicas: int


def subject_token(value: str, empty: str = "_") -> str:
    """One subject token from free text (workspace ids, type names)."""
    return _UNSAFE.sub("_", value) or empty


def stream_name(service: str) -> str:
    return "ONEFOLD_" + _UNSAFE.sub("_", service).upper()


def service_subjects(service: str) -> str:
    return event_filter(service)


def event_filter(service: str, partition: int | None = None, event_type: str | None = None) -> str:
    """Subject filter for a service's events (all, or one partition; every type, or one)."""
    kind = "*" if event_type is None else event_kind(event_type)
    last = "*" if partition is None else str(partition)
    return f"{SUBJECT_ROOT}.{subject_token(service)}.{kind}.*.{last}"


def digest_subject(service: str) -> str:
    return f"{SUBJECT_ROOT}.{subject_token(service)}.digest"


def dlq_subject(service: str, upstream: str) -> str:
    return f"{SUBJECT_ROOT}.dlq.{subject_token(service)}.{subject_token(upstream)}"


def partition_of(key: str, partitions: int) -> int:
    """Stable across processes and releases (unlike hash()): the same key, the same partition."""
    if partitions <= 0:
        raise ValueError("partitions must be positive")
    return zlib.crc32(key.encode()) % partitions


def event_kind(event_type: str) -> str:
    """`onefold.consent.v1.ConsentGranted` -> `ConsentGranted`."""
    return subject_token(event_type.rsplit(".", 1)[-1], empty="Event")


def event_subject(
    service: str,
    *,
    event_type: str,
    workspace: str,
    stream_id: str,
    metadata: Mapping[str, str],
    partitions: int,
) -> str:
    key = metadata.get(PARTITION_KEY) or stream_id
    return ".".join(
        (
            SUBJECT_ROOT,
            subject_token(service),
            event_kind(event_type),
            subject_token(workspace),
            str(partition_of(key, partitions)),
        )
    )


def partition_from_subject(subject: str) -> int | None:
    last = subject.rsplit(".", 1)[-1]
    return int(last) if last.isdigit() else None


def consumer_name(service: str, upstream: str, partitions: Sequence[int] | None = None) -> str:
    """Durable name of `service`'s consumer of `upstream`, e.g. `segments__ingest` or `..._p0-3`."""
    name = f"{service}__{upstream}"
    if partitions is not None:
        name += "__p" + "-".join(str(p) for p in sorted(set(partitions)))
    return _UNSAFE.sub("_", name)


async def ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> api.StreamInfo:
    """Create the stream, or bring an existing one to `config` (limits may change between releases)."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            info = await js.add_stream(config)
            log.info("jetstream.stream_created", stream=config.name, subjects=config.subjects)
            return info
        except BadRequestError:
            # Another replica created it between our look-up and our create: update instead.
            pass
    info = await js.update_stream(config)
    return info


def _stream_config(
    name: str, subjects: list[str], settings: StreamSettings, description: str
) -> api.StreamConfig:
    return api.StreamConfig(
        name=name,
        description=description,
        subjects=subjects,
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=settings.replicas,
        max_age=settings.max_age_seconds,
        max_bytes=settings.max_bytes,
        duplicate_window=settings.duplicate_window_seconds,
        discard=api.DiscardPolicy.OLD,
        allow_atomic=settings.allow_atomic or None,
    )


async def ensure_service_stream(
    js: JetStreamContext, service: str, settings: StreamSettings = StreamSettings()
) -> api.StreamInfo:
    return await ensure_stream(
        js,
        _stream_config(
            stream_name(service),
            [service_subjects(service)],
            settings,
            f"Events published by the Onefold {service} service (its outbox relay)",
        ),
    )


async def ensure_dlq_stream(
    js: JetStreamContext, settings: StreamSettings = StreamSettings()
) -> api.StreamInfo:
    return await ensure_stream(
        js,
        _stream_config(
            DLQ_STREAM,
            [DLQ_SUBJECTS],
            settings,
            "Events a subscriber could not handle after bounded retries, with the error in headers",
        ),
    )


async def ensure_witness_stream(
    js: JetStreamContext, settings: StreamSettings = StreamSettings()
) -> api.StreamInfo:
    """The stream of every service's signed chain digests: kept forever, never deleted or purged.

    Nothing a service's database holds can change what was witnessed here, and the server refuses
    to delete or purge a message of it, even for a client allowed to publish to it.
    """
    return await ensure_stream(
        js,
        api.StreamConfig(
            name=WITNESS_STREAM,
            description="Signed chain digests of every Onefold service's log (the independent anchor)",
            subjects=[WITNESS_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=0,
            max_msgs=-1,
            max_bytes=-1,
            max_msgs_per_subject=-1,
            duplicate_window=settings.duplicate_window_seconds,
            discard=api.DiscardPolicy.NEW,
            deny_delete=True,
            deny_purge=True,
            allow_rollup_hdrs=False,
        ),
    )


async def ensure_consumer(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    filter_subjects: Sequence[str],
    ack_wait_seconds: float = 30.0,
    max_ack_pending: int = 10_000,
    replicas: int = 0,
    start_sequence: int | None = None,
) -> api.ConsumerInfo:
    """Create or update a durable pull consumer.

    An existing consumer keeps where it starts from (the server refuses to change that on update);
    `start_sequence` only applies to a new consumer (a rewind deletes the old one first).

    The server redelivers without limit (max_deliver -1): the subscriber counts attempts itself and
    dead-letters an event only once the dead-letter copy is safely stored, so the server never drops
    an event while the DLQ is unreachable.
    """
    filters = list(filter_subjects)
    config = api.ConsumerConfig(
        name=durable,
        durable_name=durable,
        description=f"Onefold subscriber {durable}",
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait_seconds,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
        replay_policy=api.ReplayPolicy.INSTANT,
        num_replicas=replicas or None,
    )
    if start_sequence is not None and start_sequence > 1:
        config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = start_sequence
    try:
        existing = await js.consumer_info(stream, durable)
    except NotFoundError:
        existing = None
    if existing is not None:
        config.deliver_policy = existing.config.deliver_policy
        config.opt_start_seq = existing.config.opt_start_seq
        config.opt_start_time = existing.config.opt_start_time
    if len(filters) == 1:
        config.filter_subject = filters[0]
    else:
        config.filter_subjects = filters
    info = await js.add_consumer(stream, config)
    return info
