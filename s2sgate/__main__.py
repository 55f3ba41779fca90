# -*- test-case-name: tests.test_cli -*-
"""Run the s2sgate command line: C{python -m s2sgate ...}."""

import sys

from s2sgate.cli import main

if __name__ == "__main__":
    sys.exit(main())
