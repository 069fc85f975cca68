"""The ``fastlstm`` command line.

    fastlstm info       print build_info(): version, compiled/selected ISA, threads, CUDA

Bad arguments print one line and exit non-zero (argparse's exit status 2).
"""

from __future__ import annotations

import argparse
import sys


def _info(args) -> int:
    import fastlstm

    info = fastlstm.build_info()
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        print(f"{key:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastlstm", description="fast fused LSTM kernels for NumPy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="print what this build contains and selected")
    p.set_defaults(func=_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
