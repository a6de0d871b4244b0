"""Errors a user can act on: the CLI prints them as one line and exits with status 2."""


class LnsubError(Exception):
    """A problem with the user's input or environment, stated in one line."""
