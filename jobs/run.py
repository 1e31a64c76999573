"""Entrypoint for ``ray job submit ... -- python -m jobs.run SPEC.yaml [--set key=value ...]``."""

import sys

from brainvlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
