"""``python -m rtd._private.node ARGS``: the `rtd` command line in a fresh process,
used to run node daemons in the background (``rtd start``) and by ``rtd.init()``."""

import os
import sys

from rtd import _core


def launcher():
    # Workers of daemons started from here run on this same interpreter.
    os.environ.setdefault("RTD_PYTHON", sys.executable)
    return [sys.executable, "-m", "rtd._private.node"]


if __name__ == "__main__":
    sys.exit(_core.cli_main(["rtd", *sys.argv[1:]], launcher()))
