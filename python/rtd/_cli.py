"""The `rtd` console script: runs the Rust CLI."""

import sys

from rtd import _core
from rtd._private.services import launcher


def main():
    sys.exit(_core.cli_main(["rtd", *sys.argv[1:]], launcher()))
