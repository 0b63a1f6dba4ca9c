"""The stage registry: every stage, in pipeline order, and which module runs it on each backend.

Data only, like a table: app.py picks the module by compute.kind (the one place that does). A stage module
holds one backend's logic; a stage whose work does not depend on the backend names the same module for
each. Adding a backend is one package (runner/<name>/) plus a column here. Modules are imported when run.
"""

from dataclasses import dataclass
from importlib import import_module
from typing import Protocol, runtime_checkable

# compute.kind -> where its stage modules live
LOCAL, AZUREML = "local", "azureml"


@runtime_checkable
class StageModule(Protocol):
    """What a module named in Stage.backends provides. app.py calls run; it also calls, when the module has them,
    is_current(outputs, spec, ctx) -> bool (are the recorded outputs still there?) and plan(spec, ctx) -> lines."""

    def run(self, spec: dict, ctx) -> dict:
        """Do the stage's work; returns its outputs, which the manifest records (ctx: runner.context.Context)."""


@runtime_checkable
class DeployBackend(StageModule, Protocol):
    """The deploy stage's module, which the chat stage and the chat page also ask for the endpoint."""

    ENDPOINT: str  # what the endpoint is, in words ("the local endpoint", "the Azure ML managed online endpoint")

    def endpoint_credentials(self, spec: dict, ctx) -> tuple[str, str]:
        """(scoring URL, key) of the endpoint deploy recorded; a StageFailed naming the fix when there is none."""

    def running_lines(self, spec: dict, outputs: dict) -> list[str]:
        """What a run's closing block says of the endpoint deploy recorded (outputs): where, what it bills, the key."""


@dataclass(frozen=True)
class Stage:
    name: str
    # compute.kind -> module defining run(spec, ctx) -> outputs; it may define is_current(outputs, spec, ctx)
    # and plan(spec, ctx) -> lines
    backends: dict
    depends_on: tuple  # spec paths the outputs depend on (hashed into the manifest)
    upstream: tuple  # stages whose outputs it reads from the manifest
    reads: str  # for the plan
    writes: str  # for the plan
    always: bool = False  # runs every time (its effect is the point, or it is idempotent)
    files: tuple = ()  # spec paths naming files whose content, not only their name, is among its inputs

    def load(self, kind: str):
        return import_module(self.backends[kind])


def on_every_backend(module: str) -> dict:
    return {LOCAL: module, AZUREML: module}


STAGES = [
    Stage(
        "data",
        on_every_backend("runner.stages.data"),
        ("data",),
        (),
        reads="the data source (shipped JSONL or a hub dataset slice)",
        writes="data/train.jsonl, data/test.jsonl",
    ),
    Stage(
        "train",
        {LOCAL: "runner.local.train", AZUREML: "runner.azure.train"},
        ("model", "train", "compute", "run.experiment_name"),
        ("data",),
        reads="data/train.jsonl, data/test.jsonl and the base model",
        files=("model.chat_template",),
        writes="an MLflow run with the fine-tuned model, metrics and a loss plot",
    ),
    Stage(
        "eval",
        {LOCAL: "runner.local.eval", AZUREML: "runner.azure.eval"},
        ("eval", "train.max_length"),
        ("data", "train"),
        reads="the held-out chats (data/test.jsonl), the base model and the fine-tuned one",
        writes="eval/metrics.json, eval/report.md, eval/answers.jsonl (also in the train stage's MLflow run)",
    ),
    Stage(
        "register",
        {LOCAL: "runner.local.register", AZUREML: "runner.azure.register"},
        ("register", "compute.kind", "azure.workspace_name"),
        ("train",),
        reads="the MLflow model of the train stage",
        writes="a new version of the registered model",
    ),
    Stage(
        "deploy",
        {LOCAL: "runner.local.deploy", AZUREML: "runner.azure.deploy"},
        ("deploy", "compute.kind", "azure.workspace_name"),
        ("register",),
        reads="the registered model version",
        writes="a scoring endpoint (local server or Azure managed online endpoint) and its key",
    ),
    Stage(
        "chat",
        on_every_backend("runner.stages.chat"),
        ("chat",),
        ("deploy",),
        reads="the endpoint URL and key",
        writes="nothing: prints the answers of the Prompt flow flow",
        always=True,
    ),
    Stage(
        "teardown",
        {LOCAL: "runner.local.teardown", AZUREML: "runner.azure.teardown"},
        (),
        ("deploy",),
        reads="the endpoint recorded by deploy",
        writes="nothing: stops the local server or deletes the Azure endpoint",
        always=True,
    ),
]


# compute.kind -> module whose points a -m sweep runs detached: plan(specs) -> lines, and
# wait_all([(spec, run_dir, name)], log) follows what their train stages submitted (runner/sweep/launcher.py)
DETACHED_IN_SWEEPS = {AZUREML: "runner.azure.sweep"}


def selected(names):
    """Stages named in the spec, in pipeline order."""
    return [s for s in STAGES if s.name in names]


def module_for(stage: Stage, spec):
    """The module that runs this stage for the spec's compute.kind: the one backend dispatcher."""
    return stage.load(spec["compute"]["kind"])


def implementation(stage_name: str, spec):
    """module_for by stage name, e.g. the chat stage asking the deploy backend for the endpoint's key."""
    return module_for(next(s for s in STAGES if s.name == stage_name), spec)


def sweep_backend(spec):
    """The module that follows this point's detached work in a sweep, or None where points run here, in turn."""
    name = DETACHED_IN_SWEEPS.get(spec["compute"]["kind"])
    return import_module(name) if name else None
