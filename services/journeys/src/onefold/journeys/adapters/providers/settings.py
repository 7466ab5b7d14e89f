"""How each channel is delivered: the `channels` key of the `journeys` section of onefold.yaml.

```yaml
journeys:
  channels:
    email: {kind: smtp, host: smtp.example.com, port: 587, security: starttls,
            username: onefold, password_file: /run/secrets/smtp, from_address: news@example.com}
    sms:   {kind: http, url: https://sms-gateway.example.com/v1/messages,
            auth: bearer, secret_file: /run/secrets/sms, rate_per_second: 20}
    push:  {kind: sandbox}
    wechat: {kind: sandbox}
```

Every channel defaults to the sandbox (sends kept, sealed, in the data dir), so a fresh
installation runs offline. Secrets are given as files (a mounted Secret) or, where only variables
can be passed, as values; neither is ever shown (`repr=False`) or logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from onefold.platform.config import ConfigError


class _ChannelBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_second: float = Field(default=10.0, gt=0, description="average sends per second")
    burst: int = Field(default=10, ge=1, description="sends allowed at once before the rate applies")
    retry_attempts: int = Field(default=4, ge=1, le=20, description="attempts in all, the first included")
    retry_base_delay_seconds: float = Field(default=0.5, ge=0, le=60)
    retry_max_delay_seconds: float = Field(default=30.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _delays_ordered(self) -> _ChannelBase:
        if self.retry_max_delay_seconds < self.retry_base_delay_seconds:
            raise ValueError("retry_max_delay_seconds must be at least retry_base_delay_seconds")
        return self


class SecretSource(BaseModel):
    """A secret given as a file (preferred) or as a value; `read()` returns it, never logs it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: str = Field(default="", repr=False, description="the value; prefer secret_file")
    secret_file: str = Field(default="", description="file holding the value (a mounted Secret)")

    def read(self, what: str) -> str:
        if self.secret_file:
            try:
                return Path(self.secret_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read the {what} file {self.secret_file}: {exc.strerror}") from None
        return self.secret


class SmtpChannel(_ChannelBase):
    kind: Literal["smtp"]
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls", description="starttls: upgrade a plain connection; tls: TLS from the start (465)"
    )
    username: str = ""
    password: SecretSource = SecretSource()
    from_address: str
    message_id_domain: str = Field(default="", description="right-hand side of Message-ID; default: from's")
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    validate_certs: bool = True
    ca_file: str = Field(default="", description="CA of the server's certificate; empty = system CAs")


class HttpChannel(_ChannelBase):
    """A provider (or a gateway in front of one) that takes one JSON POST per message."""

    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    auth: Literal["none", "bearer", "header"] = Field(
        default="bearer",
        description="bearer: Authorization: Bearer <secret>; header: <secret_header>: <secret>",
    )
    credential: SecretSource = SecretSource()
    secret_header: str = Field(default="X-Api-Key", pattern=r"^[A-Za-z0-9-]+$")
    timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    ca_file: str = Field(default="", description="CA of the endpoint's certificate; empty = system CAs")
    id_field: str = Field(default="id", description="field of the JSON answer holding the provider's id")


class SandboxChannel(_ChannelBase):
    kind: Literal["sandbox"] = "sandbox"
    # Sends are local writes: no reason to hold them back like a remote provider.
    rate_per_second: float = Field(default=1000.0, gt=0)
    burst: int = Field(default=1000, ge=1)


ChannelProvider = Annotated[SmtpChannel | HttpChannel | SandboxChannel, Field(discriminator="kind")]


class ChannelsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    email: ChannelProvider = SandboxChannel()
    sms: ChannelProvider = SandboxChannel()
    push: ChannelProvider = SandboxChannel()
    wechat: ChannelProvider = SandboxChannel()
    sandbox_database_url: str = Field(
        default="", description="where the sandbox keeps its sends; empty = <data_dir>/journeys-sandbox.db"
    )
