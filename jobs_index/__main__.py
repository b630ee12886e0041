"""``python -m jobs_index``: the ``jobs-index`` command."""

from .cli import main

main()
