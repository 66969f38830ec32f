"""`fer-ray` console command. Each subcommand lives in fer_ray/commands/<name>.py and exposes
HELP, add_arguments(parser) and run(args) -> exit code. Errors the user can fix end as one line
on stderr: exit 2 for a bad argument, 1 for a failed run."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import FerRayError, UsageError

COMMANDS = ("prepare", "train", "evaluate", "quantize", "ensemble", "predict", "label", "query", "report", "serve")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line
        raise UsageError(f"{self.prog}: {message}")


def _load(name: str):
    return importlib.import_module(f"fer_ray.commands.{name}")


def build_parser(only: str | None = None) -> Parser:
    parser = Parser(prog="fer-ray", description="Facial-expression recognition with Ray.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        if only and name != only:
            continue
        module = _load(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    only = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        args = build_parser(only).parse_args(argv)
        return int(args._run(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FerRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"error: not found: {exc.filename or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fer-ray ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def job_main(command: str) -> None:
    """Entry for jobs/<command>.py under `ray job submit`: same flags as `fer-ray <command>`."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
