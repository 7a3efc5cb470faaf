"""``python -m quadvault_dali`` = the ``quadvault`` command (for when pip's script folder is not on PATH)."""

from quadvault_dali.cli.main import main

main(prog_name="quadvault")
