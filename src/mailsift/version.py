"""The version of mailsift (one place: the package, ``--version`` and stamps read it)."""

__version__ = "0.1.0"
