"""``meunet``: one command, with subcommands (:mod:`meunet.cli.commands`, one module each).

Each subcommand parses its arguments and calls the library. Errors caused by
the input (:class:`~meunet.errors.MeunetError`, and argparse's own) print one
line and exit with status 2; any other exception is a bug in meunet: it keeps
its traceback, asks to be reported, and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from meunet.cli.commands import COMMANDS
from meunet.errors import MeunetError

REPORT = "this is a bug in meunet; please report it with the command and this traceback"


def build_parser() -> argparse.ArgumentParser:
    """The ``meunet`` parser: one subparser per module of :data:`~meunet.cli.commands.COMMANDS`."""
    from meunet import __version__

    parser = argparse.ArgumentParser(
        prog="meunet",
        description="Memory-efficient segmentation of very large 3D images (microCT).",
    )
    parser.add_argument("--version", action="version", version=f"meunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.HELP, description=command.DESCRIPTION)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``meunet`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MeunetError as e:  # bad input: one line, no traceback
        print(f"meunet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"meunet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # not the input's fault: keep what a developer needs to fix it
        traceback.print_exc()
        print(f"meunet {args.command}: {REPORT}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
