"""`python -m qmsflow.stack up|down|status`: the stack without the CLI (Makefile targets)."""

from __future__ import annotations

import argparse
import sys

from qmsflow.errors import StackError
from qmsflow.settings import Settings
from qmsflow.stack import down, status, up


def main(argv: list[str] | None = None) -> int:
    """Run one stack command; exit status 1 with the error on stderr when it fails."""
    parser = argparse.ArgumentParser(prog="python -m qmsflow.stack", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status"))
    command = parser.parse_args(argv).command
    settings = Settings()
    try:
        if command == "up":
            up(settings)
        elif command == "down":
            down(settings)
        else:
            for server, state in status(settings).items():
                details = "  ".join(
                    f"{key}={value}" for key, value in state.items() if key != "state"
                )
                print(f"{server:<9} {state['state']:<15} {details}")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
