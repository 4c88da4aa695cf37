"""``python -m benchmarks <name>``: the same command as ``python -m fedenv.bench <name>``."""

from benchmarks.cli import main

main()
