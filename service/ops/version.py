"""What is running: the package version and the source's git revision (for /healthz, /readyz, `--version`)."""

import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]


@lru_cache
def version() -> str:
    try:
        return package_version("trial-fhir")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


@lru_cache
def git_revision(configured: str | None = None) -> str:
    """TRIAL_FHIR_GIT_REVISION when set (an image built without .git), else `git rev-parse HEAD` of the source
    folder, else "unknown"."""
    if configured:
        return configured
    try:
        done = subprocess.run(["git", "-C", str(SOURCE), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    revision = done.stdout.strip()
    return revision if done.returncode == 0 and revision else "unknown"
