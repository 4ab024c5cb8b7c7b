"""``python -m salus`` runs the command-line interface."""

from salus.cli import main

if __name__ == "__main__":
    main()
