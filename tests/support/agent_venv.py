"""Microsoft Agent Framework's own virtualenv: agent-framework-openai does not co-install with promptflow's pins,
so it never goes into .venv. Built once per pin list, cached and locked as the Azure environments' venvs are
(tests/support/azure_envs.py: ~/.cache/phi3-runner/venvs, one builder per list across xdist workers).
"""

from pathlib import Path

from . import azure_envs

# agent-framework-openai and the two packages whose API the example touches, at the versions it was written against
PINS = ["agent-framework-openai==1.17.0", "agent-framework-core==1.26.0", "openai==3.63.0"]
EXAMPLE = Path(__file__).with_name("agent_framework_example.py")


def python() -> Path:
    """The venv's python; pytest.skip with pip's reason where the packages cannot be installed here."""
    import subprocess

    import pytest

    try:
        return azure_envs.build("agent-framework", PINS, timeout=900)
    except RuntimeError as exc:  # pip's own words: no index reachable, no wheel for this platform, ...
        pytest.skip(f"cannot install {' '.join(PINS)}: {str(exc)[-1500:]}")
    except subprocess.TimeoutExpired:
        pytest.skip(f"installing {' '.join(PINS)} took over 900 s")
