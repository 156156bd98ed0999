"""``python -m ihs_sight``: the command-line interface (same as the ``ihs-sight`` script)."""

from __future__ import annotations


def main() -> None:
    """Run the Typer app in ``cli/``."""
    from ihs_sight_cli.app import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
