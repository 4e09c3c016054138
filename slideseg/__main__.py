"""``python -m slideseg`` runs the command line."""

from slideseg.cli import main

main()
