"""`python -m pseudocot` is the `pseudocot` command."""

from pseudocot.cli import main

main()
