"""The ``m2vae-fusion`` command line: one entry point, one sub-command per module in ``m2vae_fusion.commands``.

Each command module defines ``HELP`` (one line), ``configure(parser)`` (arguments; imports only the standard
library so that ``--help`` stays fast) and ``run(args) -> int`` (the work; heavy imports go inside).
A :class:`m2vae_fusion.errors.UserError` raised by ``run`` is printed as one line and exits with its status.
"""
import argparse
import importlib
import sys

from m2vae_fusion import __version__
from m2vae_fusion.errors import UserError

# name -> module under m2vae_fusion.commands, in the order `--help` lists them
COMMANDS = ["demo", "dataset", "train", "export", "verify", "eval", "bench", "record"]


def _available():
    for name in COMMANDS:
        try:
            yield name, importlib.import_module(f"m2vae_fusion.commands.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet is simply not listed
            if exc.name != f"m2vae_fusion.commands.{name}":
                raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2vae-fusion",
        description="Multi-modal sensor fusion for robots with β-VAEs and the M2VAE (Korthals et al. 2019).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _available():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        code = args._run(args)
    except UserError as exc:
        print(f"m2vae-fusion {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"m2vae-fusion {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
