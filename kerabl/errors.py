"""The one exception kerabl raises for bad input.

A `KerablError` carries a single line that says what was wrong and what to do;
the command line prints it and exits with status 2, never with a traceback.
"""


class KerablError(Exception):
    """Bad input or a state the user must change: one line, what was wrong and what to do.

    Example:
        raise KerablError("image folder x does not exist: pass an existing folder")
    """
