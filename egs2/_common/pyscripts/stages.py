"""Running one pipeline stage (a stock entry point) as a logged subprocess."""

import subprocess
from pathlib import Path
from typing import List


def run_stage(command: List[str], log: Path) -> None:
    """Run one stage, logging to a file; fail with the log tail on error."""
    print("+", " ".join(command), f"> {log}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "".join(open(log).readlines()[-30:])
        raise RuntimeError(f"stage failed ({done.returncode}): see {log}\n{tail}")
