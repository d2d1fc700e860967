"""``python -m pxq.cli``: the same as the ``pxq`` command."""

from pxq.cli import main

main()
