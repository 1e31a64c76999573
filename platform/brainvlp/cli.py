"""``brainvlp run SPEC.yaml [--set key=value ...] [--debug] [--verbose]`` and ``brainvlp validate SPEC.yaml``.

Both check the whole spec and then its inputs (``brainvlp.inputs``) before anything starts. An error the
user can fix (``SpecError``, ``UserError``) ends with one line on stderr and exit status 2, an interrupt
with one line and status 130; ``--debug`` adds the traceback. Any other exception is a bug and keeps its
traceback (status 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from brainvlp.errors import UserError, one_line
from brainvlp.spec import SpecError

USER_ERROR, INTERRUPTED = 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line and status 2 like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="brainvlp", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
        command.add_argument(
            "--debug", action="store_true", help="print the traceback of an error, not only its line"
        )
        if name == "run":
            command.add_argument(
                "--verbose",
                action="store_true",
                default=None,
                help="show Ray's and the libraries' logs on the console too (they always go to "
                "<run_dir>/ray.log); also BRAINVLP_VERBOSE=1",
            )
        command.add_argument(
            "--no-inputs",
            dest="check_inputs",
            action="store_false",
            help="check the spec only, not its inputs (e.g. before the job that writes them has run)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code, started = _command(args)
    if argv is None and not started:
        # A program run (argv from the command line, not a caller's) that started nothing: skip the
        # interpreter's teardown of the torch / Ray / MONAI modules, about 1 s of `brainvlp validate`.
        # Only the standard streams hold anything to flush.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _command(args: argparse.Namespace) -> tuple[int, bool]:
    """Exit status of the command, and whether it started the run (Ray, files of the run directory)."""
    # Imported here, not at the top: `brainvlp --help` and usage errors need none of the job modules.
    from brainvlp.inputs import check_inputs
    from brainvlp.pipeline import load_spec
    from brainvlp.runner import run

    stage = "spec"  # what failed: the spec, its inputs, or the run itself
    try:
        spec = load_spec(args.spec, args.overrides)
        stage = "inputs"
        for warning in check_inputs(spec) if args.check_inputs else ():
            print(f"brainvlp: warning: {warning}", file=sys.stderr)
        if args.command == "validate":
            checked = "inputs checked" if args.check_inputs else "inputs not checked"
            print(f"{args.spec}: valid {spec.kind} spec; {checked}")
            return 0, False
        stage = "run"
        run(spec, verbose=args.verbose)
        return 0, True
    except KeyboardInterrupt:
        _report(args.debug, "interrupted")
        return INTERRUPTED, stage == "run"
    except (SpecError, UserError) as err:
        if isinstance(err, SpecError):
            prefix = f"invalid spec {args.spec}: "
        else:  # input errors name the spec path; errors of the run itself name their own file
            prefix = f"{args.spec}: " if stage == "inputs" else ""
        _report(args.debug, prefix + one_line(err))
        return USER_ERROR, stage == "run"


def _report(debug: bool, line: str) -> None:
    if debug:
        traceback.print_exc()
    print(f"brainvlp: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
