"""What every benchmark script does last: its figures as JSON, in a file and on stdout."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(result: dict, path: str | Path) -> None:
    """Write ``result`` to ``path``, indented (making its folder), and print it on one line,
    after the script's table, for whoever reads the run's output rather than the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
