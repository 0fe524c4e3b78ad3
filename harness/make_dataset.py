"""``python -m harness.make_dataset``: the command's old name, kept as an alias of
:mod:`harness.data.synthetic` (where the dataset maker lives now, beside the rest of the
video data code)."""
import sys

from harness.data.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
