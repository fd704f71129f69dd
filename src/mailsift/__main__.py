"""``python -m mailsift``: the command line (:mod:`mailsift.cli.main`)."""

from mailsift.cli.main import main

if __name__ == "__main__":
    main()
