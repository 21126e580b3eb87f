"""The ``vashista quality`` suite: dense vs Vashista decode on the embedded model (see ``cli.py``)."""
