"""What a benchmark's --json writes: its figures, with the machine's load when it finished."""

from __future__ import annotations

import json
import os


def write(path: str | None, figures: dict) -> None:
    if not path:
        return
    figures["load_after"] = round(os.getloadavg()[0], 2)
    with open(path, "w") as f:
        json.dump(figures, f, indent=2)
