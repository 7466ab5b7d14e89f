"""`onefold keys rotate`: replace a service's key-encryption key and re-wrap its data keys under it.

Offline by design: the service must be stopped (every replica). The command holds the data dir's
`onefold up` lock and the service's leader lease for its whole run, so it refuses to start beside a
running `onefold up` or a running leader, and neither can start beside it. Steps, each safe to
interrupt (running the command again resumes):

1. the current key is copied to `<key file>.previous` (0600, written atomically, synced);
2. a new key (carrying the same derived keys for blind indexes and signatures) replaces the key file;
3. every live data key is re-wrapped under the new key in batches (EventStore.rewrap_data_keys);
   the wrapped keys name their KEK, and whoever loads the key file meanwhile knows both keys;
4. only then `<key file>.previous` is deleted: from here on a backup taken before the rotation can
   no longer be read with the current key — in particular the data keys of subjects erased since
   that backup are gone for good.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from onefold.cli.client import CliError, DataDir, fail
from onefold.cli.options import Json, KeyDir
from onefold.cli.output import console, err_console, print_json
from onefold.cli.supervisor import SERVICES, key_file, resolve_key_dir
from onefold.platform.config_error import ConfigError

# The event log, SQLAlchemy and the settings models load when a rotation runs, not for `--help`.
if TYPE_CHECKING:
    from rich.progress import Progress

keys_app = typer.Typer(help="Manage the services' key-encryption keys.", no_args_is_help=True)


@dataclass(frozen=True)
class Rotated:
    service: str
    key_file: Path
    rewrapped: int
    resumed: bool


@contextlib.contextmanager
def _up_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's `onefold up` lock: nothing may run on it during a rotation."""
    run = data_dir / "run"
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock: IO[str] = (run / "up.lock").open("a")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CliError(f"`onefold up` is running on {data_dir}; stop it before rotating keys") from None
        yield
    finally:
        lock.close()


def rotate_service(
    service: str,
    *,
    data_dir: Path,
    key_dir: Path | None,
    config: Path | None,
    batch_size: int,
    progress: Progress,
) -> Rotated:
    """Rotate one service's key (see the module docstring); resumes an interrupted rotation."""
    from onefold.eventlog.keyfile import (
        load_key_file,
        previous_path,
        remove_file,
        write_key_file,
        write_text_file,
    )
    from onefold.eventlog.lease import LeaderLease
    from onefold.eventlog.registry import EventRegistry
    from onefold.eventlog.store import EventStore
    from onefold.platform.config import load_settings
    from onefold.platform.database import create_engine

    settings = load_settings(service, config, data_dir=str(data_dir))
    if settings.eventlog.key_encryption_key:
        raise CliError(
            f"the {service} key-encryption key is given inline (eventlog.key_encryption_key); rotation "
            "writes a key file: point eventlog.key_file at a writable copy (see docs/security.md)"
        )
    path = (
        Path(settings.eventlog.key_file)
        if settings.eventlog.key_file
        else key_file(resolve_key_dir(data_dir, key_dir), service)
    )
    if not path.exists():
        raise CliError(f"the {service} key file {path} does not exist; nothing to rotate")
    engine = create_engine(settings.database_url())
    lease = LeaderLease(engine, f"{service}:eventlog")
    try:
        if not lease.try_acquire():
            raise CliError(f"the {service} service is running on this database; stop every replica first")
        current = load_key_file(path)
        resumed = current.previous is not None
        if not resumed:
            # The old key is safe on disk (synced) before the key file changes.
            write_text_file(previous_path(path), current.to_text())
            current = current.rotated()
            write_key_file(path, current)
        store = EventStore(engine, service=service, registry=EventRegistry(), keys=current)
        store.create_schema()
        task = progress.add_task(service, total=None)
        seen = [0]  # the last batch's total: a pass with nothing to do reports no batch at all

        def advance(done: int, total: int) -> None:
            seen[0] = total
            progress.update(task, completed=done, total=total)

        rewrapped = store.rewrap_data_keys(batch_size=batch_size, progress=advance)
        progress.update(task, completed=seen[0], total=seen[0])
    finally:
        lease.release()
        engine.dispose()
    remove_file(previous_path(path))  # every data key is under the new key now (committed)
    return Rotated(service, path, rewrapped, resumed)


@keys_app.command("rotate")
def rotate(
    service: Annotated[
        list[str] | None, typer.Option("--service", "-s", help=f"repeatable; one of {', '.join(SERVICES)}")
    ] = None,
    all_services: Annotated[bool, typer.Option("--all", help="every service")] = False,
    data_dir: DataDir = Path(".onefold"),
    key_dir: KeyDir = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="ONEFOLD_CONFIG", help="YAML settings of the services"),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="data keys re-wrapped per transaction")] = 1000,
    as_json: Json = False,
) -> None:
    """Replace key-encryption keys and re-wrap every data key under the new one (services stopped).

    Interrupted, run it again: it resumes. Backups taken before the rotation cannot be read with the
    new key; keep the data dir's backups and key backups in step (see docs/security.md)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from onefold.eventlog.errors import MissingKeyEncryptionKey, WrongKeyEncryptionKey
    from onefold.platform.service import PRIVATE_UMASK

    names = list(SERVICES) if all_services else list(dict.fromkeys(service or ()))
    if not names or (all_services and service):
        raise fail("name the services with --service NAME (repeatable), or pass --all")
    unknown = [name for name in names if name not in SERVICES]
    if unknown:
        raise fail(f"unknown service {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    data_dir = data_dir.resolve()
    os.umask(PRIVATE_UMASK)  # key files, a -wal beside a database: the user's alone
    done: list[Rotated] = []
    try:
        with (
            _up_lock(data_dir),
            Progress(
                TextColumn("{task.description:<10}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console if as_json else console,  # stdout holds only the JSON
            ) as progress,
        ):
            for name in names:
                done.append(
                    rotate_service(
                        name,
                        data_dir=data_dir,
                        key_dir=key_dir.resolve() if key_dir else None,
                        config=config,
                        batch_size=batch_size,
                        progress=progress,
                    )
                )
    except CliError as error:
        raise fail(error.message, error.code) from None
    except (ConfigError, MissingKeyEncryptionKey, WrongKeyEncryptionKey) as error:
        raise fail(str(error)) from None
    finally:
        if as_json:
            print_json(
                [
                    {
                        "service": rotated.service,
                        "key_file": str(rotated.key_file),
                        "rewrapped": rotated.rewrapped,
                        "resumed": rotated.resumed,
                    }
                    for rotated in done
                ]
            )
        else:
            for rotated in done:
                how = "resumed and finished" if rotated.resumed else "rotated"
                console.print(
                    f"{rotated.service}: key {how} ({rotated.key_file}); {rotated.rewrapped:,} data keys "
                    "re-wrapped",
                    highlight=False,
                )
