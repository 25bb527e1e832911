"""`python -m lshsim.cli`: the `lshsim` command."""
import sys

from lshsim.cli import main

if __name__ == "__main__":
    sys.exit(main())
