"""Dataset subcommands (``prepare``, ``data info``)."""


def register(subparsers) -> None:
    """Add the dataset subcommands to the ``alae-ray`` parser."""
