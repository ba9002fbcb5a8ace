"""Benchmarks run by ``tools/benchmark.py``: each module has ``main(argv) -> int``."""

from __future__ import annotations

import argparse


def docstring_parser(mode: str, doc: str) -> argparse.ArgumentParser:
    """The parser of ``tools/benchmark.py MODE``: its module docstring's first paragraph as the
    description, the rest (commands, what is measured) as the epilog, shown as written."""
    paragraphs = doc.split("\n\n")
    return argparse.ArgumentParser(
        prog=f"benchmark.py {mode}",
        description=paragraphs[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(paragraphs[1:]),
    )
