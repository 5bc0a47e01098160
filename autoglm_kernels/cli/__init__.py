"""Command line: `autoglm-kernels <command>` or `python -m autoglm_kernels <command>`.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
User errors (bad option values, missing paths, no GPU for a GPU-only option) raise CLIError:
one clear line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

COMMANDS = {
    "doctor": "versions, build facts and which kernels run on this machine",
}


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _register_optional():
    # Commands whose modules exist in this checkout (others are added as they land).
    for name, help_ in (
        ("demo", "build (or load) a model, patch it, generate, compare with stock"),
        ("bench", "end-to-end generate benchmark, stock vs patched"),
        ("profile", "top kernels and kernel count per decode step, stock vs patched"),
        ("report", "turn benchmark JSON into Markdown tables and PNG plots"),
    ):
        if importlib.util.find_spec(f"autoglm_kernels.cli.{name}") is not None:
            COMMANDS[name] = help_


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    _register_optional()
    parser = _Parser(prog="autoglm-kernels", description="Fast Hugging Face decode with handwritten CUDA/Triton kernels.")
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(f"autoglm_kernels.cli.{name}").add_arguments(p)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(f"autoglm_kernels.cli.{args.command}")
    try:
        return int(module.run(args) or 0)
    except CLIError as e:
        print(f"autoglm-kernels {args.command}: error: {e}", file=sys.stderr)
        return 2
