"""Options shared by many commands, defined apart from the code that calls services so that a
command's `--help` needs neither gRPC nor the generated messages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onefold.cli.supervisor import KEY_DIR_ENV, SERVICES

DataDir = Annotated[
    Path, typer.Option("--data-dir", "-d", envvar="ONEFOLD_DATA_DIR", help="where state and logs live")
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="ONEFOLD_TOKEN", help="API credential (or env ONEFOLD_TOKEN)", show_default=False
    ),
]
Target = Annotated[
    str | None,
    typer.Option(
        "--target",
        envvar="ONEFOLD_INGEST_TARGET",
        help="ingest gRPC host:port (default: from <data-dir>/run/endpoints.json)",
        show_default=False,
    ),
]
KeyDir = Annotated[
    Path | None,
    typer.Option(
        "--key-dir",
        envvar=KEY_DIR_ENV,
        help="where `onefold up` keeps the services' key-encryption keys "
        "(default: ~/.config/onefold/keys/<installation id>/, or <data-dir>/keys where they already are)",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]

# A command about each service's log (`onefold audit verify`, `onefold lag`): one, or every one.
ServiceName = Annotated[
    str | None, typer.Argument(help=f"one of {', '.join(SERVICES)} (default: every service)")
]
ServiceTarget = Annotated[
    str | None,
    typer.Option(
        "--target",
        help="the SERVICE's gRPC host:port (default: ONEFOLD_<SERVICE>_TARGET or endpoints.json)",
        show_default=False,
    ),
]

ConsentTarget = Annotated[
    str | None,
    typer.Option(
        "--target",
        envvar="ONEFOLD_CONSENT_TARGET",
        help="consent gRPC host:port (default: from <data-dir>/run/endpoints.json)",
        show_default=False,
    ),
]

ApplyConsentTarget = Annotated[
    str | None,
    typer.Option(
        "--consent-target",
        envvar="ONEFOLD_CONSENT_TARGET",
        help="consent gRPC host:port for ConsentModel (default: from <data-dir>/run/endpoints.json)",
        show_default=False,
    ),
]

ApplySegmentsTarget = Annotated[
    str | None,
    typer.Option(
        "--segments-target",
        envvar="ONEFOLD_SEGMENTS_TARGET",
        help="segments gRPC host:port for segments definitions (default: from <data-dir>/run/endpoints.json)",
        show_default=False,
    ),
]

ApplyJourneysTarget = Annotated[
    str | None,
    typer.Option(
        "--journeys-target",
        envvar="ONEFOLD_JOURNEYS_TARGET",
        help="journeys gRPC host:port for journeys and templates (default: from <data-dir>/run/endpoints.json)",
        show_default=False,
    ),
]

ApplyDestinationsTarget = Annotated[
    str | None,
    typer.Option(
        "--destinations-target",
        envvar="ONEFOLD_DESTINATIONS_TARGET",
        help="destinations gRPC host:port for destinations (default: from <data-dir>/run/endpoints.json)",
        show_default=False,
    ),
]
