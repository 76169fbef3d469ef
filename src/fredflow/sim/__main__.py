"""``python -m fredflow.sim --port P [...]``: see :mod:`fredflow.sim.cli`."""

from fredflow.sim.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
