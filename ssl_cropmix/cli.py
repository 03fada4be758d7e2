"""``ssl-cropmix`` console entry point (LightningCLI arrives with the CLI issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print("usage: ssl-cropmix {fit,validate,test,show-views,probe,export} --config CONFIG.yaml")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
