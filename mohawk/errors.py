"""The one error class meant for users: the CLI prints it as a single line, without a traceback."""


class MohawkError(Exception):
    """A problem with the user's input or environment, explained in one line."""
