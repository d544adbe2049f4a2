"""The one exception type a user sees as a one-line message (the CLI turns it into exit code 2)."""


class StarloraError(Exception):
    """Bad input or configuration: the message names the file, line or option at fault."""
