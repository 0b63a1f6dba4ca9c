"""The commands the runner prints for a person to paste: each selects the same run (its options as given, less
the ones that pick stages) and works, with no virtualenv activated, where the runner was started.

`Again` is built once per invocation (app.main) from the command line, or from a sweep point's overrides and its
folder; stages ask it for a command (`ctx.again.command("deploy", "chat")`). `closing_block` is what a run prints
at its end: what still runs, how to chat with it, how to stop it.
"""

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from . import REPO_ROOT

# options that pick what runs rather than which run: a printed command sets its own
PICKS_STAGES = {"stages", "plan", "force", "chat.ui", "sweep.deploy"}
HYDRA_FLAGS_WITH_VALUE = {"--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp"}
HYDRA_FLAGS = {"-m", "--multirun"}


def _key(option: str) -> str:
    return option.split("=", 1)[0].lstrip("+~")


def _venv_python() -> Path:
    return REPO_ROOT / ".venv" / "bin" / "python"


def program(cwd: Path | None = None) -> str:
    """How to start the runner as pasted where it ran: ./dev run in the repository root (no activated venv needed);
    elsewhere the venv's Python by path (./dev would run in the repository root, and relative paths would move);
    else python -m runner as it was started."""
    here = Path(cwd or os.getcwd())
    in_venv = Path(sys.executable).parent == _venv_python().parent
    if in_venv and here.resolve() == REPO_ROOT.resolve():
        return "./dev run"
    if in_venv:
        return f"{shlex.quote(str(_venv_python()))} -m runner"
    return "python -m runner"


def kept(argv) -> list[str]:
    """The options of argv that select the run and its config: stage pickers, -m and azure.* values (they come
    from the shell's environment; a subscription id is never printed) left out."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            out.append(a)
            continue
        if a in HYDRA_FLAGS or _key(a) in PICKS_STAGES or _key(a).startswith("azure."):
            continue
        if a in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        out.append(a)
    return out


@dataclass(frozen=True)
class Again:
    """What selects this run again: the program and the options (as given, quoted when printed)."""

    options: tuple = ()
    prog: str = "python -m runner"

    @classmethod
    def from_argv(cls, argv, cwd: Path | None = None) -> "Again":
        return cls(tuple(kept(argv)), program(cwd))

    @classmethod
    def for_point(cls, overrides, cwd: Path | None = None) -> "Again":
        """A sweep point: -m with the point's overrides alone, which is a sweep of one point in the same folder."""
        return cls(("-m", *kept(overrides)), program(cwd))

    def command(self, *stages: str, extra: tuple = ()) -> str:
        picks = [f"stages=[{','.join(stages)}]"] if stages else []
        return " ".join([self.prog, *map(shlex.quote, [*self.options, *picks, *extra])])

    def chat_page(self) -> str:
        return self.command("chat", extra=("chat.ui=true",))

    def teardown(self) -> str:
        return self.command("teardown")

    def redeploy(self) -> str:
        return self.command("deploy", "chat")


def pf_program(cwd: Path | None = None) -> str:
    """Prompt flow's CLI as pasted where the runner ran: ./dev pf (its switches set, no venv activated; it runs in
    the repository root, where --flow flow is) when this is the repository's venv, else pf next to this Python."""
    if Path(sys.executable).parent == _venv_python().parent:
        here = Path(cwd or os.getcwd())
        return "./dev pf" if here.resolve() == REPO_ROOT.resolve() else f"{shlex.quote(str(REPO_ROOT / 'dev'))} pf"
    pf = Path(sys.executable).parent / "pf"
    return shlex.quote(str(pf)) if pf.exists() else "pf"


def closing_block(spec, manifest, again: Again, deploy_module, flow_commands=None) -> list[str]:
    """What a run that leaves something behind says last: what runs, where, how to chat, how to stop it.
    Nothing when no endpoint of this run is up. flow_commands(connection) -> the Prompt flow commands to show."""
    entry = manifest.entry("deploy")
    if entry.get("status") == "stopped":
        return [
            "what next:",
            "  the endpoint of this run is torn down; to bring it back (and chat):",
            f"    {again.redeploy()}",
        ]
    if entry.get("status") != "done":
        return []
    out = entry.get("outputs", {})
    lines = ["what next (commands paste as printed, from this directory):"]
    lines += [f"  {x}" for x in deploy_module.running_lines(spec, out)]
    lines.append(f"  chat page:   {again.chat_page()}")
    connection = manifest.outputs("chat").get("connection")
    if connection and flow_commands:
        lines.append(f"  Prompt flow: {flow_commands(connection)[0]}")
    report = manifest.outputs("eval").get("report")
    if report:
        lines.append(f"  eval report: {report}")
    lines.append(f"  stop it:     {again.teardown()}")
    return lines
