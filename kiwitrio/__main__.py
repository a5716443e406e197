"""``python -m kiwitrio``: the ``kiwitrio`` command line (see :mod:`kiwitrio._cli`)."""

import sys

from kiwitrio._cli import main

if __name__ == "__main__":
    sys.exit(main())
