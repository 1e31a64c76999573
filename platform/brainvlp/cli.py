"""``brainvlp run SPEC.yaml [--set key=value ...]`` and ``brainvlp validate SPEC.yaml``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from brainvlp.spec import SpecError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brainvlp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "validate and run a job spec"), ("validate", "only validate a job spec")):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("spec", help="path of a YAML job spec")
        command.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a spec value by dotted path, e.g. --set pretrain.train.epochs=2",
        )
    args = parser.parse_args(argv)
    from brainvlp.runner import load_spec, run

    try:
        spec = load_spec(args.spec, args.overrides)
    except SpecError as err:
        print(f"brainvlp: invalid spec {args.spec}: {err}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"{args.spec}: valid {spec.kind} spec")
        return 0
    run(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
