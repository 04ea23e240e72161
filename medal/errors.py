"""One exception type for bad input, so every task can turn it into a one-line message."""


class MedalError(Exception):
    """Bad input or configuration: the message names the file/row/key and the fix, on one line."""
