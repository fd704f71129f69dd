"""The ``mailsift`` command line: :mod:`mailsift.cli.main` (serve, check-config, scan,
scan-mailbox) and one module per command group beside it, with :mod:`mailsift.cli.common`
holding the config option and loader they share."""
