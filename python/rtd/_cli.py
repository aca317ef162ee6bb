"""The `rtd` console script: runs the Rust CLI."""

import signal
import sys

from rtd import _core
from rtd._private.services import launcher


def main():
    # The command runs in Rust without returning to Python: let Ctrl-C end it (`rtd logs
    # --follow`) as it ends the standalone binary, rather than wait on Python's handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_core.cli_main(["rtd", *sys.argv[1:]], launcher()))
