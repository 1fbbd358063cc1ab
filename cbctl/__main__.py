"""`python -m cbctl`: the same command line as the `cbctl` console script."""

from cbctl.cli import main

main()
