"""The layering contracts of pyproject.toml ([tool.importlinter]) hold: layers point down only (cli → api →
service → tasks → engine → models → core), the wire APIs are independent translations, the Python client
imports no server code, and no package has an import circle between its modules (imports inside functions
count). import-linter checks them; this runs it as CI does."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
