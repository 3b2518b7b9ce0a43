"""Entry point of the one-file executable: the same command line as `python -m guardproxy`."""

import sys

from guardproxy.cli import main

if __name__ == "__main__":
    sys.exit(main())
