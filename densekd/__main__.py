"""``python -m densekd`` (and ``torchrun -m densekd train ...``)."""
import sys

from .cli import main

sys.exit(main())
