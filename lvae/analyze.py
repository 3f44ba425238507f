"""`python -m lvae.analyze`: the command lives in lvae/cli/analyze.py."""

from lvae.cli.analyze import main

if __name__ == "__main__":
    main()
