"""Who may do what on the bus: one NATS user per service, least privilege, from one consumption graph.

The graph below (which service consumes which upstream) is the only place this is declared; the
nats-server authorization block of `onefold up`, of the tests and of deploy/k8s is rendered from it.

A service may
- publish only its own subjects (`onefold.<service>.>`: events and its chain digest) and its own
  dead-letter subjects (`onefold.dlq.<service>.>`);
- call the JetStream API for its own stream (info, create, update, read and delete a message), for
  the shared dead-letter stream (info, create, update: write-only) and for the witness stream of chain
  digests (read every digest);
- create, read, delete and pull from only its durable consumers `<service>__<upstream>` on the streams
  of the upstreams it consumes (with W worker processes, `eventlog.workers`: the W consumers of its
  partition groups, `<service>__<upstream>__p<partitions>`), and acknowledge their messages;
- subscribe to nothing but its own reply inbox `_INBOX.<service>.>` (JetStream delivers pulled
  messages and API answers there), so no service sees another's deliveries or replies.

`operator` (the CLI: `onefold audit verify`) only reads chain digests: the witness stream. `admin`
may do anything: it is used by no service, only for maintenance with the nats CLI and by tests that
need raw access.

The subject and stream names mirror onefold.eventlog.streams (pinned by the tests).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

SUBJECT_ROOT = "onefold"
DLQ_STREAM = "ONEFOLD_DLQ"
WITNESS_STREAM = "ONEFOLD_WITNESS"
OPERATOR = "operator"
ADMIN = "admin"

# upstream services each service consumes (an upstream's events reach a service only through this).
CONSUMES: Mapping[str, tuple[str, ...]] = {
    "ingest": (),
    "identity": ("ingest", "journeys"),  # journeys: the traits its steps set
    "consent": ("identity",),
    "segments": ("identity", "consent", "insights"),  # insights: the model tags it writes back
    "journeys": ("identity", "segments", "consent"),
    "destinations": ("identity", "segments", "consent"),
    "insights": ("identity", "segments", "journeys"),  # the analytical copy
}
SERVICES: tuple[str, ...] = tuple(CONSUMES)
USERS: tuple[str, ...] = (*SERVICES, OPERATOR, ADMIN)

_JS = "$JS.API"


def stream_of(service: str) -> str:
    return f"ONEFOLD_{service.upper()}"


DEFAULT_PARTITIONS = 16


def durable_of(service: str, upstream: str, partitions: Iterable[int] | None = None) -> str:
    name = f"{service}__{upstream}"
    if partitions is not None:
        name += "__p" + "-".join(str(p) for p in sorted(set(partitions)))
    return name


def consumers_of(service: str, upstream: str, workers: int, partitions: int) -> list[str]:
    """One durable consumer, or one per partition group (p in group p mod workers) with workers > 1."""
    if workers <= 1:
        return [durable_of(service, upstream)]
    return [durable_of(service, upstream, range(group, partitions, workers)) for group in range(workers)]


def digest_subject_of(service: str) -> str:
    return f"{SUBJECT_ROOT}.{service}.digest"


def inbox_prefix(user: str) -> str:
    """Where a user's replies and pulled messages arrive; nobody else may subscribe there."""
    return f"_INBOX.{user}"


@dataclass(frozen=True)
class BusUser:
    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def _consumer_api(stream: str, consumer: str) -> tuple[str, ...]:
    return (
        f"{_JS}.CONSUMER.INFO.{stream}.{consumer}",
        f"{_JS}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{_JS}.CONSUMER.CREATE.{stream}.{consumer}.>",  # the filter subject follows the name
        f"{_JS}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"{_JS}.CONSUMER.DELETE.{stream}.{consumer}",  # a rewind re-creates the consumer
        f"{_JS}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    )


def _digest_reader_api() -> tuple[str, ...]:
    """Everything needed to read the witness stream (chain digests only, nothing personal)."""
    return (
        f"{_JS}.STREAM.INFO.{WITNESS_STREAM}",
        f"{_JS}.STREAM.MSG.GET.{WITNESS_STREAM}",
        f"{_JS}.DIRECT.GET.{WITNESS_STREAM}",
        f"{_JS}.DIRECT.GET.{WITNESS_STREAM}.>",
        f"{_JS}.CONSUMER.CREATE.{WITNESS_STREAM}",  # ephemeral and ordered consumers
        *_consumer_api(WITNESS_STREAM, "*"),
        f"$JS.FC.{WITNESS_STREAM}.>",
    )


def service_user(service: str, workers: int = 1, partitions: int = DEFAULT_PARTITIONS) -> BusUser:
    own = stream_of(service)
    stream_api = ("INFO", "CREATE", "UPDATE", "MSG.GET", "MSG.DELETE")
    publish = [
        f"{SUBJECT_ROOT}.{service}.>",
        f"{SUBJECT_ROOT}.dlq.{service}.>",
        *(f"{_JS}.STREAM.{call}.{own}" for call in stream_api),
        f"{_JS}.DIRECT.GET.{own}",
        f"{_JS}.DIRECT.GET.{own}.>",
        *(f"{_JS}.STREAM.{call}.{DLQ_STREAM}" for call in ("INFO", "CREATE", "UPDATE")),
        # The witness stream: created by whichever service starts first, read by all.
        f"{_JS}.STREAM.CREATE.{WITNESS_STREAM}",
        f"{_JS}.STREAM.UPDATE.{WITNESS_STREAM}",
        *_digest_reader_api(),
    ]
    for upstream in CONSUMES[service]:
        for consumer in consumers_of(service, upstream, workers, partitions):
            publish += _consumer_api(stream_of(upstream), consumer)
    return BusUser(service, tuple(dict.fromkeys(publish)), (f"{inbox_prefix(service)}.>",))


def operator_user() -> BusUser:
    return BusUser(OPERATOR, _digest_reader_api(), (f"{inbox_prefix(OPERATOR)}.>",))


def admin_user() -> BusUser:
    return BusUser(ADMIN, (">",), (">",))


def bus_users(
    workers: Mapping[str, int] | None = None, partitions: int = DEFAULT_PARTITIONS
) -> tuple[BusUser, ...]:
    """Every user; `workers`: the services run with several worker processes, and how many."""
    services = (service_user(s, (workers or {}).get(s, 1), partitions) for s in SERVICES)
    return (*services, operator_user(), admin_user())


def _list(subjects: tuple[str, ...], indent: str) -> str:
    return "[\n" + "".join(f'{indent}  "{s}"\n' for s in subjects) + f"{indent}]"


def authorization_config(
    password: Callable[[str], str],
    workers: Mapping[str, int] | None = None,
    partitions: int = DEFAULT_PARTITIONS,
) -> str:
    """The nats-server `authorization` block; `password(user)` is the value as written in the config
    (a quoted literal locally, a `$VARIABLE` taken from the environment in Kubernetes). `workers` and
    `partitions` as the services are configured (`eventlog.workers`, `eventlog.partitions`).

    With users defined and no `no_auth_user`, the server refuses every client without a credential.
    """
    lines = ["authorization {", "  users: ["]
    for user in bus_users(workers, partitions):
        lines += [
            "    {",
            f"      user: {user.name}",
            f"      password: {password(user.name)}",
            "      permissions: {",
            f"        publish: {{ allow: {_list(user.publish, '        ')} }}",
            f"        subscribe: {{ allow: {_list(user.subscribe, '        ')} }}",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def environment_password(user: str) -> str:
    """The config variable nats-server resolves from its environment (deploy/k8s: from Secrets)."""
    return f"$NATS_PASSWORD_{user.upper()}"


def _main(argv: list[str]) -> None:
    """The block deploy/k8s/components/nats/nats.yaml embeds; `--workers segments=4,identity=2`
    (and `--partitions N` if not 16) when services run with several worker processes."""
    parser = argparse.ArgumentParser(prog="python -m onefold.platform.bus_permissions")
    parser.add_argument("--workers", default="", help="name=N[,name=N...], as ONEFOLD_EVENTLOG__WORKERS")
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    args = parser.parse_args(argv)
    workers: dict[str, int] = {}
    for pair in filter(None, args.workers.split(",")):
        name, _, count = pair.partition("=")
        if name not in CONSUMES or not count.isdigit() or not 1 <= int(count) <= args.partitions:
            parser.error(
                f"--workers: {pair!r} is not <service>=<1..{args.partitions}> ({', '.join(SERVICES)})"
            )
        workers[name] = int(count)
    sys.stdout.write(authorization_config(environment_password, workers, args.partitions))


if __name__ == "__main__":
    _main(sys.argv[1:])
