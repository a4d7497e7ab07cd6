"""The ``transfusion`` command: ``main`` and its subcommands (``COMMANDS``), all argument parsing.

    commands.py   the subcommands for runs and checkpoints (train, generate, caption, edit, eval, ...)
    assets.py     tokenizer, autoencoder and data: the assets a run is built from
    flags.py      the flag groups the subcommands share
"""

from transfusion.cli.commands import COMMANDS, main

__all__ = ["COMMANDS", "main"]
