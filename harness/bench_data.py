"""``python -m harness.bench_data``: the decode benchmark's old name, kept as an alias of
``python -m harness.bench data`` (:mod:`harness.data.bench`)."""
import sys

from harness.data.bench import main

if __name__ == "__main__":
    sys.exit(main())
