"""Task commands of ``ssl-cropmix`` that are not Lightning ``fit/validate/test`` runs.

Each command is a thin argparse front end over a library function, so everything here is
also usable from Python.
"""

from __future__ import annotations

import argparse


def _parser(cmd: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"ssl-cropmix {cmd}")


def run(cmd: str, argv: list[str]) -> int:
    """Dispatch ``cmd`` with its own arguments ``argv``."""
    handler = _HANDLERS.get(cmd)
    if handler is None:  # pragma: no cover - guarded by cli.TASK_COMMANDS
        raise SystemExit(f"unknown command {cmd!r}")
    return handler(argv)


def _not_ready(cmd: str):
    def _h(argv: list[str]) -> int:
        _parser(cmd).parse_args(argv)
        raise SystemExit(f"ssl-cropmix {cmd}: not available in this build")

    return _h


def _show_views(argv: list[str]) -> int:
    from ssl_cropmix.data import grid

    return int(grid.main(argv, prog="ssl-cropmix show-views") or 0)


_HANDLERS = {c: _not_ready(c) for c in ("probe", "finetune", "export")}
_HANDLERS["show-views"] = _show_views
