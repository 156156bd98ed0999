"""``python -m ihs_sight``: the command-line interface (same as the ``ihs-sight`` script).

The library never imports its command line (``cli/``, installed as ``ihs_sight_cli``): this
module finds the ``ihs-sight`` console script through the installed entry points and runs it.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

SCRIPT = "ihs-sight"


def main() -> None:
    """Run the ``ihs-sight`` console script's entry point; one line on stderr if there is none."""
    found = list(entry_points(group="console_scripts", name=SCRIPT))
    if not found:
        sys.exit(f"error: the {SCRIPT} command line is not installed; install the ihs-sight package "
                 "(pip install ihs-sight), which provides it.")
    try:
        cli = found[0].load()
    except ImportError as e:
        sys.exit(f"error: the {SCRIPT} command line cannot be loaded: {e}")
    cli()


if __name__ == "__main__":
    main()
