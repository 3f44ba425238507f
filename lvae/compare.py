"""`python -m lvae.compare`: the command lives in lvae/cli/compare.py."""

from lvae.cli.compare import main

if __name__ == "__main__":
    main()
