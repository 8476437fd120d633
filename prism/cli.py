"""The ``prism`` command line: one entry point, one sub-command module per area.

Each area owns its sub-commands in its own ``cli`` module exposing
``add_commands(subparsers)``; each sub-command sets ``func`` to a callable taking the
parsed ``argparse.Namespace`` and returning an exit code. Modules are imported only
when their area is listed here, so ``prism --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "prism.synth.cli",  # prism synth
    "prism.data.cli",  # prism manifest / qc / preprocess
    "prism.evaluation.cli",  # prism evaluate
    "prism.finetune.cli",  # prism export / embed / benchmark
)


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prism", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):  # area (or its package) not installed: skip it
                continue
            raise
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as err:
        print(f"prism {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
