"""``python -m vwed_bridge``: the same as the ``vwed-bridge`` command."""

from .cli import main

main()
