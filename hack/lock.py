#!/usr/bin/env python3
"""Write requirements.lock: the runtime dependencies of pyproject.toml, fully resolved by pip."""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
with tempfile.TemporaryDirectory() as tmp:
    report = Path(tmp) / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                    "--report", str(report), str(REPO)], check=True)
    items = json.loads(report.read_text())["install"]
lines = sorted(f"{re.sub(r'[-_.]+', '-', i['metadata']['name']).lower()}=={i['metadata']['version']}" for i in items
               if i["metadata"]["name"].lower() != "necrocode-cancel")
(REPO / "requirements.lock").write_text(
    "# Runtime dependencies of necrocode-cancel, fully resolved (the container image installs exactly these).\n"
    "# Regenerate: make lock\n" + "\n".join(lines) + "\n")
print(f"requirements.lock: {len(lines)} packages")
