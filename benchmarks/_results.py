"""Writing a benchmark's JSON result: atomically, so a run stopped by its time limit keeps the last whole file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quadvault_dali._files import atomic_path


def write_json(path: Path, doc: dict[str, Any], indent: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=indent) + "\n")
