"""``python -m nag_guidance`` = the ``nag`` command (e.g. under ``torchrun`` / ``accelerate launch``)."""

from nag_guidance.cli import main

main()
