"""The environment every benchmark CSV row records, and the CSV writer."""

import csv
import datetime
import platform
import subprocess
from pathlib import Path

import torch


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    try:
        here = Path(__file__).parent
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        sha = sha.stdout.strip()
    except OSError:
        sha = ""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else _cpu_name()
    return {
        "date": datetime.date.today().isoformat(),
        "device": device,
        "cpus": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "git_sha": sha,
    }


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Rows (dicts with the same keys) plus the environment columns, to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = environment()
    rows = [{**row, **env} for row in rows]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
