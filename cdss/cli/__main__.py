"""``python -m cdss.cli``: the ``cdss`` command."""

from cdss.cli import main

main()
