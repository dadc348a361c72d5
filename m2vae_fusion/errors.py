"""Errors that the command line turns into a one-line message and an exit status."""


class UserError(Exception):
    """A problem with the user's input (argument, file, config): printed as one line, exit status ``exit_code``.

    Args:
        message: what is wrong, naming the file, key or argument.
        exit_code: process exit status (2 for bad input; ``verify`` uses 1 for a mismatch).
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class BundleError(UserError):
    """A model bundle is missing, corrupt or inconsistent (the message names the file)."""
