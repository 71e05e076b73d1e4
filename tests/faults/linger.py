"""A stand-in for a trainer in the lifeline tests: `python -m tests.faults.linger MARKER` writes its pid to MARKER,
then sleeps for a minute (it is meant to be killed long before)."""

import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    Path(sys.argv[1]).write_text(str(os.getpid()))
    time.sleep(60)
