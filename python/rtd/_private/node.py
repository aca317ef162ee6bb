"""``python -m rtd._private.node ARGS``: the `rtd` command line in a fresh process. Kept
apart from the package's imports so that running it as __main__ loads it only once."""

import sys

from rtd import _core
from rtd._private.services import launcher

if __name__ == "__main__":
    sys.exit(_core.cli_main(["rtd", *sys.argv[1:]], launcher()))
