#!/usr/bin/env python3
"""Build every parity fixture: tiny random-weight checkpoints in the Hugging Face layout,
real tokenizers from ../shared/vocab, and the reference outputs of transformers/PyTorch.

Run by hand (needs torch + transformers); CI only reads what this writes under fixtures/.

    python3 tools/reference/make_fixtures.py            # all
    python3 tools/reference/make_fixtures.py clip blip  # some
"""
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

FAMILIES = ["clip", "blip", "blip2"]


def main(argv):
    wanted = argv or FAMILIES
    for family in wanted:
        module = importlib.import_module(f"{family}_fixtures")
        module.main()


if __name__ == "__main__":
    main(sys.argv[1:])
