"""``python -m transfusion``: the ``transfusion`` command (also what ``torchrun -m transfusion`` runs)."""

from transfusion.cli import main

if __name__ == "__main__":
    main()
