"""`onefold credentials create|list|revoke`: API credentials in the credential store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from onefold.cli.options import DataDir, Json
from onefold.cli.output import console, fail, print_json, print_table
from onefold.platform.config_error import ConfigError
from onefold.platform.scopes import SCOPES

if TYPE_CHECKING:
    from onefold.platform.auth import CredentialStore

credentials_app = typer.Typer(help="Create, list and revoke API credentials.", no_args_is_help=True)

AuthDb = Annotated[
    str | None,
    typer.Option(envvar="ONEFOLD_AUTH__DATABASE_URL", help="credential store URL (default: in the data dir)"),
]
LIST_COLUMNS = ("id", "workspace", "name", "scopes", "created_at", "revoked_at")


def _store(data_dir: Path, auth_db: str | None) -> CredentialStore:
    from onefold.platform.auth import CredentialStore

    store = CredentialStore(auth_db or f"sqlite:///{data_dir.resolve() / 'auth.db'}")
    store.create_schema()
    return store


@credentials_app.command("create")
def credentials_create(
    workspace: Annotated[str, typer.Option(help="the workspace the credential belongs to")],
    scope: Annotated[list[str], typer.Option(help=f"repeatable; one of: {', '.join(sorted(SCOPES))}")],
    name: Annotated[str, typer.Option(help="a label for people")] = "",
    data_dir: DataDir = Path(".onefold"),
    auth_db: AuthDb = None,
    json_output: Json = False,
) -> None:
    """Create a credential; its secret is printed once and only its hash is stored."""
    from onefold.platform.errors import OnefoldError

    try:
        issued = _store(data_dir, auth_db).issue(workspace, scope, name)
    except (OnefoldError, ConfigError) as error:
        raise fail(str(error)) from None
    if json_output:
        print_json(
            {
                "id": issued.id,
                "workspace": issued.workspace,
                "scopes": list(issued.scopes),
                "token": issued.token,
            }
        )
        return
    console.print(
        f"credential {issued.id} for workspace '{issued.workspace}' with scopes {', '.join(issued.scopes)}",
        highlight=False,
    )
    console.print(issued.token, highlight=False, soft_wrap=True)


@credentials_app.command("list")
def credentials_list(
    workspace: Annotated[str | None, typer.Option()] = None,
    data_dir: DataDir = Path(".onefold"),
    auth_db: AuthDb = None,
    json_output: Json = False,
) -> None:
    """List credentials (never their secrets)."""
    from onefold.platform.errors import OnefoldError

    try:
        rows = _store(data_dir, auth_db).list(workspace)
    except (OnefoldError, ConfigError) as error:
        raise fail(str(error)) from None
    if json_output:
        print_json([{key: row[key] for key in LIST_COLUMNS} for row in rows])
        return
    print_table(
        ("id", "workspace", "name", "scopes", "created", "revoked"),
        [[str(row[key] or "") for key in LIST_COLUMNS] for row in rows],
    )


@credentials_app.command("revoke")
def credentials_revoke(
    credential_id: str,
    data_dir: DataDir = Path(".onefold"),
    auth_db: AuthDb = None,
) -> None:
    """Revoke a credential; services stop accepting it within their cache time (5 s by default)."""
    from onefold.platform.errors import OnefoldError

    try:
        _store(data_dir, auth_db).revoke(credential_id)
    except (OnefoldError, ConfigError) as error:
        raise fail(str(error)) from None
    console.print(f"revoked {credential_id}", highlight=False)
