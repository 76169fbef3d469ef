"""``python -m fredflow.bench``: same as ``fredflow bench``."""

import sys

from fredflow.bench import main

if __name__ == "__main__":
    sys.exit(main())
