"""A workspace's consent model, validated: purposes with their lawful basis per jurisdiction,
channels, versioned notices and guardian ages. Pure; raises ModelError naming the field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from onefold.contracts.consent.v1 import consent_pb2 as pb

# PIPL Art. 31: under 14. GDPR Art. 8: under 16 unless a member state lowered it (13 at least).
DEFAULT_GUARDIAN_AGE = {"PIPL": 14, "GDPR": 16}
DEFAULT_CHANNELS = ("email", "sms", "push", "wechat", "phone")
_ID = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MEMBER_STATE = re.compile(r"^GDPR:[A-Z]{2}$")
_JURISDICTION_NAMES: dict[int, str] = {pb.JURISDICTION_PIPL: "PIPL", pb.JURISDICTION_GDPR: "GDPR"}
_PIPL_ONLY = {
    pb.LEGAL_BASIS_HUMAN_RESOURCES,
    pb.LEGAL_BASIS_NEWS_REPORTING,
    pb.LEGAL_BASIS_PUBLICLY_DISCLOSED,
    pb.LEGAL_BASIS_OTHER_LAW,
}
_GDPR_ONLY = {pb.LEGAL_BASIS_PUBLIC_TASK, pb.LEGAL_BASIS_LEGITIMATE_INTERESTS}
# Purposes that PIPL requires separate consent for (Art. 29 sensitive information, Art. 39 cross-border).
SEPARATE_CONSENT_KINDS = {
    pb.PURPOSE_KIND_SENSITIVE: "PIPL Art. 29",
    pb.PURPOSE_KIND_CROSS_BORDER: "PIPL Art. 39",
}


class ModelError(ValueError):
    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def jurisdiction_name(jurisdiction: int) -> str:
    return _JURISDICTION_NAMES.get(jurisdiction, "")


@dataclass(frozen=True)
class NoticeVersion:
    notice_id: str
    version: str
    language: str
    text_sha256: str
    purpose_ids: frozenset[str]
    material_change: bool
    published_at: datetime


@dataclass(frozen=True)
class Model:
    version: int
    purposes: Mapping[str, pb.Purpose]
    channels: tuple[str, ...]
    notices: Mapping[tuple[str, str], NoticeVersion]
    guardian_age: Mapping[str, int]
    proto: pb.ConsentModel = field(compare=False, repr=False)

    def purpose(self, purpose_id: str) -> pb.Purpose | None:
        return self.purposes.get(purpose_id)

    def guardian_age_for(self, jurisdiction: int, country: str) -> int:
        name = jurisdiction_name(jurisdiction)
        if not name:
            return 0
        if name == "GDPR" and country:
            specific = self.guardian_age.get(f"GDPR:{country.upper()}")
            if specific:
                return specific
        return self.guardian_age.get(name, DEFAULT_GUARDIAN_AGE[name])

    def basis(self, purpose: pb.Purpose, jurisdiction: int) -> int:
        """The lawful basis of `purpose` where the subject is; consent when the model names none."""
        name = jurisdiction_name(jurisdiction)
        return purpose.legal_bases.get(name, pb.LEGAL_BASIS_CONSENT) if name else pb.LEGAL_BASIS_CONSENT

    def default_jurisdiction(self, purpose: pb.Purpose) -> int:
        for name, value in (("PIPL", pb.JURISDICTION_PIPL), ("GDPR", pb.JURISDICTION_GDPR)):
            if name in purpose.legal_bases:
                return value
        return pb.JURISDICTION_PIPL

    def material_notice_after(
        self, purpose_id: str, since: datetime, until: datetime
    ) -> NoticeVersion | None:
        """The first notice version with a material change for `purpose_id` published after `since`
        (when the consent was given) and by `until` (the time of the check): re-consent is due."""
        found = [
            notice
            for notice in self.notices.values()
            if notice.material_change
            and purpose_id in notice.purpose_ids
            and since < notice.published_at <= until
        ]
        return min(found, key=lambda notice: notice.published_at) if found else None


def empty_model() -> Model:
    return model_from_proto(pb.ConsentModel())


def model_from_proto(message: pb.ConsentModel) -> Model:
    purposes: dict[str, pb.Purpose] = {}
    for index, purpose in enumerate(message.purposes):
        where = f"purposes[{index}]"
        if not _ID.match(purpose.purpose_id):
            raise ModelError(
                f"{where}.purpose_id must be lower-case letters, digits, '_', '-' or '.', starting with a letter",
                f"{where}.purpose_id",
            )
        if purpose.purpose_id in purposes:
            raise ModelError(
                f"{where}.purpose_id {purpose.purpose_id!r} is defined twice", f"{where}.purpose_id"
            )
        if purpose.kind == pb.PURPOSE_KIND_UNSPECIFIED:
            raise ModelError(f"{where}.kind is required (marketing, analytics, ...)", f"{where}.kind")
        for name, basis in purpose.legal_bases.items():
            if name not in DEFAULT_GUARDIAN_AGE:
                raise ModelError(
                    f"{where}.legal_bases has an unknown jurisdiction {name!r} (PIPL, GDPR)",
                    f"{where}.legal_bases",
                )
            if basis == pb.LEGAL_BASIS_UNSPECIFIED:
                raise ModelError(f"{where}.legal_bases[{name}] is unspecified", f"{where}.legal_bases")
            if (name == "PIPL" and basis in _GDPR_ONLY) or (name == "GDPR" and basis in _PIPL_ONLY):
                raise ModelError(
                    f"{where}.legal_bases[{name}] is not a lawful basis under {name} "
                    f"({'PIPL Art. 13' if name == 'PIPL' else 'GDPR Art. 6'})",
                    f"{where}.legal_bases",
                )
            if purpose.kind in SEPARATE_CONSENT_KINDS and name == "PIPL" and basis != pb.LEGAL_BASIS_CONSENT:
                raise ModelError(
                    f"{where} is {pb.PurposeKind.Name(purpose.kind)}: PIPL requires separate consent "
                    f"({SEPARATE_CONSENT_KINDS[purpose.kind]}), not another basis",
                    f"{where}.legal_bases",
                )
        if purpose.kind == pb.PURPOSE_KIND_CROSS_BORDER:
            recipient = purpose.recipient
            missing = [
                name
                for name in ("name", "country", "contact", "purpose", "method")
                if not getattr(recipient, name)
            ]
            if missing or not recipient.data_types:
                raise ModelError(
                    f"{where} is a cross-border transfer: PIPL Art. 39 requires the recipient's "
                    f"{', '.join(missing or ['data_types'])}",
                    f"{where}.recipient",
                )
        purposes[purpose.purpose_id] = purpose
    channels = tuple(message.channels) or DEFAULT_CHANNELS
    for index, channel in enumerate(channels):
        if not _ID.match(channel):
            raise ModelError(f"channels[{index}] is not a valid channel name", f"channels[{index}]")
    notices: dict[tuple[str, str], NoticeVersion] = {}
    for index, notice in enumerate(message.notices):
        where = f"notices[{index}]"
        if not _ID.match(notice.notice_id) or not notice.version:
            raise ModelError(f"{where} needs a notice_id and a version", f"{where}.notice_id")
        if (notice.notice_id, notice.version) in notices:
            raise ModelError(
                f"{where}: {notice.notice_id} version {notice.version} is defined twice", f"{where}.version"
            )
        if not _SHA256.match(notice.text_sha256):
            raise ModelError(
                f"{where}.text_sha256 must be the hex SHA-256 of the notice text (GDPR Art. 7(1): "
                "proof of what was shown)",
                f"{where}.text_sha256",
            )
        unknown = [p for p in notice.purpose_ids if p not in purposes]
        if unknown or not notice.purpose_ids:
            raise ModelError(
                f"{where} must name purposes of this model ({', '.join(unknown) or 'none named'})",
                f"{where}.purpose_ids",
            )
        if not notice.HasField("published_at"):
            raise ModelError(f"{where}.published_at is required", f"{where}.published_at")
        notices[(notice.notice_id, notice.version)] = NoticeVersion(
            notice.notice_id,
            notice.version,
            notice.language,
            notice.text_sha256,
            frozenset(notice.purpose_ids),
            notice.material_change,
            notice.published_at.ToDatetime(tzinfo=UTC),
        )
    guardian_age = dict(DEFAULT_GUARDIAN_AGE)
    for key, age in message.guardian_age.items():
        base = key.split(":", 1)[0]
        if base not in DEFAULT_GUARDIAN_AGE:
            raise ModelError(f"guardian_age has an unknown jurisdiction {key!r}", "guardian_age")
        if key != base and not (base == "GDPR" and _MEMBER_STATE.match(key)):
            # Checks look up "GDPR:<upper-case country>": any other spelling would never apply.
            raise ModelError(
                f"guardian_age key {key!r} must be PIPL, GDPR or GDPR:<ISO 3166 country code>, e.g. GDPR:FR",
                "guardian_age",
            )
        if base == "GDPR" and not 13 <= age <= 16:
            raise ModelError(f"guardian_age[{key}] must be 13 to 16 (GDPR Art. 8(1))", "guardian_age")
        if base == "PIPL" and age < 14:
            raise ModelError(f"guardian_age[{key}] cannot be below 14 (PIPL Art. 31)", "guardian_age")
        guardian_age[key] = age
    return Model(message.version, purposes, channels, notices, guardian_age, message)
