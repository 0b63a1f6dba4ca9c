"""Running `python -m runner` as a user would, in a scratch directory."""
import os
import subprocess
import sys

from runner import REPO_ROOT


def runner_cli(*args, cwd, env=None, timeout=300):
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
