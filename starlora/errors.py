"""The one exception type a user sees as a one-line message (the CLI turns it into exit code 2), and the warning
category the CLI shows as one line."""


class StarloraError(ValueError):
    """Bad input or configuration: the message names the file, line or option at fault."""


class StarloraWarning(UserWarning):
    """Something a caller should know about a result (e.g. it read labels a real pool does not have)."""
