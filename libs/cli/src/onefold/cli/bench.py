"""`onefold bench NAME [ARGS]`: run bench/NAME.py's `main(argv)` from the source checkout."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import typer


def bench_dir() -> Path:
    """bench/ of the checkout: $ONEFOLD_BENCH_DIR, else the nearest bench/ above here or the cwd."""
    if env := os.environ.get("ONEFOLD_BENCH_DIR"):
        return Path(env)
    for start in (Path.cwd(), Path(__file__).resolve()):
        for parent in [start, *start.parents]:
            if (parent / "bench").is_dir() and (parent / "pyproject.toml").is_file():
                return parent / "bench"
    raise typer.BadParameter("cannot find the bench/ directory; set ONEFOLD_BENCH_DIR")


def available(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.py") if not p.stem.startswith("_"))


def _names_help() -> str:
    try:
        return "benchmark: " + ", ".join(available(bench_dir()))
    except typer.BadParameter:
        return "benchmark name (bench/NAME.py of the checkout)"


def bench(ctx: typer.Context, name: str = typer.Argument(help=_names_help())) -> None:
    directory = bench_dir()
    path = directory / f"{name}.py"
    if not path.is_file():
        raise typer.BadParameter(
            f"no benchmark '{name}'; available: {', '.join(available(directory)) or 'none'}"
        )
    spec = importlib.util.spec_from_file_location(f"onefold_bench_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling) look their module up by name
    spec.loader.exec_module(module)
    raise typer.Exit(int(module.main(list(ctx.args)) or 0))
