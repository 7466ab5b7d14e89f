"""`onefold apply -f consent.yaml` for `kind: ConsentModel` documents, and how the CLI reaches a
service other than ingest (the consent service, and every service's log for `onefold audit`).

A consent model document (see deploy/examples/consent.yaml) looks like:

    kind: ConsentModel
    channels: [email, sms, push, wechat, phone]
    guardian_age: {PIPL: 14, GDPR: 16, "GDPR:FR": 15}    # PIPL Art. 31, GDPR Art. 8
    purposes:
      - id: marketing
        name: Direct marketing
        kind: marketing                  # marketing | analytics | personalisation | third_party_sharing
                                         # | cross_border | sensitive | custom
        legal_bases: {PIPL: consent, GDPR: consent}
        consent_validity_days: 730       # 0 or absent: a grant never expires
        retention_days: 1095
        recipient: {...}                 # cross_border purposes: name, country, contact, purpose, method,
                                         # data_types, rights_procedure (PIPL Art. 39)
    notices:
      - id: privacy
        version: "3"
        language: zh-CN
        purposes: [marketing, analytics]
        text_file: notices/privacy-v3.zh-CN.txt    # or text: |  ... (inline)
        material_change: false
        published_at: 2025-01-01T00:00:00Z

Keys may also be written in camelCase (`legalBases`, `publishedAt`, ...). The CLI computes each
notice's `text_sha256` from the exact bytes of its text (the file as stored, or the inline text as
UTF-8), so every consent recorded under the notice proves which text was shown. Applying is
idempotent: the model is set only when it differs from the workspace's current one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc

from onefold.cli.client import (
    CHANNEL_OPTIONS,
    CliError,
    Connection,
    describe_rpc_error,
    fail,
    same_apart_from_version,
)
from onefold.cli.supervisor import ENDPOINTS_FILE, read_endpoints
from onefold.contracts.consent.v1 import consent_pb2 as pb
from onefold.contracts.consent.v1 import consent_pb2_grpc
from onefold.platform.client import authenticated_channel
from onefold.platform.config import ConfigError

T = TypeVar("T")

CONSENT_KIND = "ConsentModel"


# --- reaching a service ---------------------------------------------------------------------------


def service_connection(data_dir: Path, service: str, target: str | None, token: str | None) -> Connection:
    """The credential and the address of `service`: `target` when given, else endpoints.json."""
    if not token:
        raise CliError("no credential: pass --token or set ONEFOLD_TOKEN (see `onefold credentials create`)")
    return Connection(target=target or service_target(data_dir, service), token=token)


def service_target(data_dir: Path, service: str) -> str:
    try:
        state = read_endpoints(data_dir.resolve())
    except ConfigError as error:
        raise CliError(f"{error}, or pass --target host:port") from None
    found = state.get("services", {}).get(service)
    if not found:
        raise CliError(f"the {service} service is not listed in {data_dir / ENDPOINTS_FILE}")
    return str(found)


def channel_to(conn: Connection) -> grpc.aio.Channel:
    return authenticated_channel(conn.target, conn.token, options=CHANNEL_OPTIONS)


def describe_service_error(error: grpc.RpcError, service: str, target: str) -> str:
    """One sentence for a failed call to `service`."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = (error.details() if callable(getattr(error, "details", None)) else "") or ""
    if code == grpc.StatusCode.UNAVAILABLE and (not details or "connect" in details.lower()):
        return f"cannot reach the {service} service at {target}; is `onefold up` running?"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the {service} service at {target} did not answer in time"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"the {service} service at {target} does not offer this call yet"
    return describe_rpc_error(error, target)


def run_call(service: str, conn: Connection, factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine against `service`; a failure is one sentence on stderr and exit code 2."""
    import asyncio

    try:
        return asyncio.run(_call(factory))
    except CliError as error:
        raise fail(error.message, error.code) from None
    except grpc.RpcError as error:
        raise fail(describe_service_error(error, service, conn.target)) from None


async def _call(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


# --- the document ---------------------------------------------------------------------------------

PURPOSE_KINDS = {
    "marketing": pb.PURPOSE_KIND_MARKETING,
    "analytics": pb.PURPOSE_KIND_ANALYTICS,
    "personalisation": pb.PURPOSE_KIND_PERSONALISATION,
    "third_party_sharing": pb.PURPOSE_KIND_THIRD_PARTY_SHARING,
    "cross_border": pb.PURPOSE_KIND_CROSS_BORDER,
    "sensitive": pb.PURPOSE_KIND_SENSITIVE,
    "custom": pb.PURPOSE_KIND_CUSTOM,
}
_KIND_ALIASES = {"personalization": "personalisation"}
LEGAL_BASES = {
    name.removeprefix("LEGAL_BASIS_").lower(): value
    for name, value in pb.LegalBasis.items()
    if value != pb.LEGAL_BASIS_UNSPECIFIED
}
JURISDICTIONS = ("PIPL", "GDPR")

MODEL_KEYS = {
    "kind": "kind",
    "apiVersion": "api_version",
    "api_version": "api_version",
    "channels": "channels",
    "purposes": "purposes",
    "notices": "notices",
    "guardian_age": "guardian_age",
    "guardianAge": "guardian_age",
}
MODEL_KEY_NAMES = ("kind", "apiVersion", "channels", "purposes", "notices", "guardian_age")
PURPOSE_KEYS = {
    "id": "purpose_id",
    "purpose_id": "purpose_id",
    "purposeId": "purpose_id",
    "name": "name",
    "kind": "kind",
    "legal_bases": "legal_bases",
    "legalBases": "legal_bases",
    "consent_validity_days": "consent_validity_days",
    "consentValidityDays": "consent_validity_days",
    "retention_days": "retention_days",
    "retentionDays": "retention_days",
    "recipient": "recipient",
}
PURPOSE_KEY_NAMES = (
    "id",
    "name",
    "kind",
    "legal_bases",
    "consent_validity_days",
    "retention_days",
    "recipient",
)
RECIPIENT_KEYS = {
    "name": "name",
    "country": "country",
    "contact": "contact",
    "purpose": "purpose",
    "method": "method",
    "data_types": "data_types",
    "dataTypes": "data_types",
    "rights_procedure": "rights_procedure",
    "rightsProcedure": "rights_procedure",
}
RECIPIENT_KEY_NAMES = ("name", "country", "contact", "purpose", "method", "data_types", "rights_procedure")
NOTICE_KEYS = {
    "id": "notice_id",
    "notice_id": "notice_id",
    "noticeId": "notice_id",
    "version": "version",
    "language": "language",
    "purposes": "purpose_ids",
    "purpose_ids": "purpose_ids",
    "purposeIds": "purpose_ids",
    "text": "text",
    "text_file": "text_file",
    "textFile": "text_file",
    "text_sha256": "text_sha256",
    "textSha256": "text_sha256",
    "material_change": "material_change",
    "materialChange": "material_change",
    "published_at": "published_at",
    "publishedAt": "published_at",
}
NOTICE_KEY_NAMES = (
    "id",
    "version",
    "language",
    "purposes",
    "text",
    "text_file",
    "material_change",
    "published_at",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def is_consent_model(document: Any) -> bool:
    return isinstance(document, dict) and document.get("kind") == CONSENT_KIND


def _keys(document: Any, allowed: dict[str, str], names: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise CliError(f"{where} must be a mapping with {', '.join(names)}")
    out: dict[str, Any] = {}
    for key, value in document.items():
        name = allowed.get(str(key))
        if name is None:
            raise CliError(f"{where}: unknown key '{key}' (expected one of: {', '.join(names)})")
        if name in out:
            raise CliError(f"{where}: '{key}' is given twice (under different spellings)")
        out[name] = value
    return out


def _text(value: Any, where: str, *, required: bool = False) -> str:
    if value is None:
        if required:
            raise CliError(f"{where} is required")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CliError(f"{where} must be text (got {value!r})")
    text = str(value).strip()
    if required and not text:
        raise CliError(f"{where} is required")
    return text


def _whole(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 2**32 - 1:
        raise CliError(f"{where} must be a whole number ≥ 0 (got {value!r})")
    return value


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise CliError(f"{where} must be true or false (got {value!r})")
    return value


def _texts(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise CliError(f"{where} must be a list of names")
    return [_text(item, f"{where}[{index}]", required=True) for index, item in enumerate(value)]


def _enum_key(value: Any) -> str:
    return str(value).strip().lower().replace("-", "_").replace(" ", "_")


def _purpose_kind(value: Any, where: str) -> pb.PurposeKind.ValueType:
    if value is None:
        raise CliError(f"{where} is required (one of: {', '.join(PURPOSE_KINDS)})")
    key = _enum_key(value).removeprefix("purpose_kind_")
    key = _KIND_ALIASES.get(key, key)
    kind = PURPOSE_KINDS.get(key)
    if kind is None:
        raise CliError(f"{where} must be one of {', '.join(PURPOSE_KINDS)} (got {value!r})")
    return kind


def _legal_basis(value: Any, where: str) -> pb.LegalBasis.ValueType:
    basis = LEGAL_BASES.get(_enum_key(value).removeprefix("legal_basis_"))
    if basis is None:
        raise CliError(f"{where} must be one of {', '.join(LEGAL_BASES)} (got {value!r})")
    return basis


def _jurisdiction(key: Any, where: str, *, country: bool = False) -> str:
    text = str(key).strip().upper()
    base, _, member = text.partition(":")
    if base not in JURISDICTIONS or (member and not (country and base == "GDPR" and len(member) == 2)):
        expected = "PIPL, GDPR or GDPR:<country>, e.g. GDPR:FR" if country else "PIPL, GDPR"
        raise CliError(f"{where} has an unknown jurisdiction {key!r} (expected {expected})")
    return text


def _moment(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise CliError(
                f"{where} must be a date and time like 2025-01-01T00:00:00Z (got {value!r})"
            ) from None
    else:
        raise CliError(f"{where} is required: when the notice version was published (e.g. 2025-01-01)")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _recipient(document: Any, where: str) -> pb.CrossBorderRecipient:
    fields = _keys(document, RECIPIENT_KEYS, RECIPIENT_KEY_NAMES, where)
    return pb.CrossBorderRecipient(
        **{
            name: _text(fields.get(name), f"{where}.{name}")
            for name in RECIPIENT_KEY_NAMES
            if name != "data_types"
        },
        data_types=_texts(fields.get("data_types"), f"{where}.data_types"),
    )


def _purpose(document: Any, where: str) -> pb.Purpose:
    fields = _keys(document, PURPOSE_KEYS, PURPOSE_KEY_NAMES, where)
    purpose_id = _text(fields.get("purpose_id"), f"{where}.id", required=True)
    where = f"{where} ({purpose_id})"
    purpose = pb.Purpose(
        purpose_id=purpose_id,
        name=_text(fields.get("name"), f"{where}.name"),
        kind=_purpose_kind(fields.get("kind"), f"{where}.kind"),
        consent_validity_days=_whole(fields.get("consent_validity_days"), f"{where}.consent_validity_days"),
        retention_days=_whole(fields.get("retention_days"), f"{where}.retention_days"),
    )
    bases = fields.get("legal_bases")
    if bases is not None:
        if not isinstance(bases, dict):
            raise CliError(
                f"{where}.legal_bases must map PIPL / GDPR to a lawful basis, e.g. {{PIPL: consent}}"
            )
        for key, value in bases.items():
            name = _jurisdiction(key, f"{where}.legal_bases")
            purpose.legal_bases[name] = _legal_basis(value, f"{where}.legal_bases.{name}")
    if fields.get("recipient") is not None:
        purpose.recipient.CopyFrom(_recipient(fields["recipient"], f"{where}.recipient"))
    return purpose


def _notice_text(fields: dict[str, Any], where: str, base_dir: Path) -> str:
    """The hex SHA-256 of the notice's exact text: the file's bytes, or the inline text as UTF-8."""
    given = [name for name in ("text", "text_file", "text_sha256") if fields.get(name) is not None]
    if "text" in given and "text_file" in given:
        raise CliError(f"{where}: give the notice's text or text_file, not both")
    if "text_file" in given:
        path = Path(_text(fields["text_file"], f"{where}.text_file", required=True))
        path = path if path.is_absolute() else base_dir / path
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as error:
            raise CliError(
                f"{where}: cannot read the notice text {path}: {error.strerror or error}"
            ) from None
    elif "text" in given:
        if not isinstance(fields["text"], str) or not fields["text"].strip():
            raise CliError(f"{where}.text must be the notice's text")
        digest = hashlib.sha256(fields["text"].encode("utf-8")).hexdigest()
    elif "text_sha256" in given:
        digest = _text(fields["text_sha256"], f"{where}.text_sha256").lower()
        if not _SHA256.match(digest):
            raise CliError(f"{where}.text_sha256 must be 64 hex digits")
        return digest
    else:
        raise CliError(
            f"{where}: give the notice's text (text, or text_file) so its SHA-256 proves what was shown"
        )
    stated = fields.get("text_sha256")
    if stated is not None and str(stated).strip().lower() != digest:
        raise CliError(f"{where}.text_sha256 does not match the text given (its SHA-256 is {digest})")
    return digest


def _notice(document: Any, where: str, base_dir: Path) -> pb.Notice:
    fields = _keys(document, NOTICE_KEYS, NOTICE_KEY_NAMES, where)
    notice_id = _text(fields.get("notice_id"), f"{where}.id", required=True)
    version = fields.get("version")
    if isinstance(version, float):
        raise CliError(f'{where}.version: write the version in quotes ("{version}") so it is kept exactly')
    version_text = _text(version, f"{where}.version", required=True)
    where = f"{where} ({notice_id} v{version_text})"
    notice = pb.Notice(
        notice_id=notice_id,
        version=version_text,
        language=_text(fields.get("language"), f"{where}.language"),
        text_sha256=_notice_text(fields, where, base_dir),
        purpose_ids=_texts(fields.get("purpose_ids"), f"{where}.purposes"),
        material_change=_flag(fields.get("material_change"), f"{where}.material_change"),
    )
    notice.published_at.FromDatetime(_moment(fields.get("published_at"), f"{where}.published_at"))
    return notice


def model_from_document(document: Any, where: str, base_dir: Path) -> pb.ConsentModel:
    """A ConsentModel from one `kind: ConsentModel` document; CliError names what is wrong."""
    fields = _keys(document, MODEL_KEYS, MODEL_KEY_NAMES, where)
    if fields.get("kind") != CONSENT_KIND:
        raise CliError(f"{where}: kind must be '{CONSENT_KIND}' (got {fields.get('kind')!r})")
    model = pb.ConsentModel(channels=_texts(fields.get("channels"), f"{where}: channels"))
    purposes = fields.get("purposes") or []
    if not isinstance(purposes, list):
        raise CliError(f"{where}: purposes must be a list")
    model.purposes.extend(_purpose(p, f"{where}: purposes[{i}]") for i, p in enumerate(purposes))
    notices = fields.get("notices") or []
    if not isinstance(notices, list):
        raise CliError(f"{where}: notices must be a list")
    model.notices.extend(_notice(n, f"{where}: notices[{i}]", base_dir) for i, n in enumerate(notices))
    ages = fields.get("guardian_age")
    if ages is not None:
        if not isinstance(ages, dict):
            raise CliError(f"{where}: guardian_age must map PIPL / GDPR / GDPR:<country> to an age")
        for key, age in ages.items():
            name = _jurisdiction(key, f"{where}: guardian_age", country=True)
            model.guardian_age[name] = _whole(age, f"{where}: guardian_age.{name}")
    # What the server would refuse anyway, said here with the document's own names.
    known = {p.purpose_id for p in model.purposes}
    for notice in model.notices:
        unknown = [p for p in notice.purpose_ids if p not in known]
        if unknown:
            raise CliError(
                f"{where}: notice {notice.notice_id} v{notice.version} names purposes the model does not "
                f"define: {', '.join(unknown)}"
            )
    return model


@dataclass(frozen=True)
class ConsentModelSpec:
    where: str
    model: pb.ConsentModel


def parse_consent_documents(documents: list[tuple[str, Any]], base_dir: Path) -> list[ConsentModelSpec]:
    """`documents`: (where, document) of each `kind: ConsentModel` document of the file."""
    specs = [ConsentModelSpec(where, model_from_document(doc, where, base_dir)) for where, doc in documents]
    if len(specs) > 1:
        raise CliError(
            f"{specs[1].where}: a workspace has one consent model; put every purpose and notice in one document"
        )
    return specs


async def apply_consent_models(conn: Connection, specs: list[ConsentModelSpec]) -> list[str]:
    lines: list[str] = []
    async with channel_to(conn) as channel:
        stub = consent_pb2_grpc.ConsentServiceStub(channel)
        for spec in specs:
            current: pb.ConsentModel = await stub.GetModel(pb.GetModelRequest())
            counts = (
                f"{len(spec.model.purposes)} purposes, {len(spec.model.channels) or 'default'} channels, "
                f"{len(spec.model.notices)} notice versions"
            )
            if current.version and same_apart_from_version(current, spec.model):
                lines.append(f"consent model unchanged (version {current.version}): {counts}")
                continue
            stored: pb.ConsentModel = await stub.SetModel(pb.SetModelRequest(model=spec.model))
            lines.append(f"consent model set (version {stored.version}): {counts}")
            for notice in stored.notices:
                lines.append(
                    f"  notice {notice.notice_id} v{notice.version} ({notice.language or 'no language'}): "
                    f"text sha256 {notice.text_sha256}"
                )
    return lines


def consent_documents(documents: list[Any], where: str) -> list[tuple[str, Any]]:
    """(where, document) of each `kind: ConsentModel` document of a file, numbered as the file's."""
    return [
        (where if len(documents) == 1 else f"{where} (document {number})", document)
        for number, document in enumerate(documents, start=1)
        if is_consent_model(document)
    ]


def apply_consent(
    specs: list[ConsentModelSpec], data_dir: Path, target: str | None, token: str | None
) -> None:
    """`onefold apply -f` for the file's ConsentModel document: set it on the consent service."""
    from rich.console import Console

    try:
        conn = service_connection(data_dir, "consent", target, token)
    except CliError as error:
        raise fail(error.message, error.code) from None
    out = Console()
    for line in run_call("consent", conn, lambda: apply_consent_models(conn, specs)):
        out.print(line, highlight=False, soft_wrap=True)
