"""Entrypoint for ``ray job submit ... -- python -m jobs.run SPEC.yaml [--set key=value ...] [--debug]``.

The same as ``brainvlp run``: the spec and its inputs are checked before Ray starts; an error the user can
fix ends with one line and exit status 2 (``--debug``: with its traceback).
"""

import sys

from brainvlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
