"""``python -m transfusion.cli``: the ``transfusion`` command (``torchrun -m transfusion.cli`` too)."""

from transfusion.cli import main

if __name__ == "__main__":
    main()
