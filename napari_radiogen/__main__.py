"""``python -m napari_radiogen ...`` = ``radiogen ...`` (also the ``torchrun -m`` entry)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
