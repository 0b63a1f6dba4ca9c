"""The stage registry: every stage, in pipeline order. Stage modules are imported only when run."""
from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Stage:
    name: str
    module: str            # defines run(spec, ctx) -> outputs; may define is_current(outputs, spec, ctx) and plan(spec, ctx)
    depends_on: tuple      # spec paths the outputs depend on (hashed into the manifest)
    upstream: tuple        # stages whose outputs it reads from the manifest
    reads: str             # for the plan
    writes: str            # for the plan
    always: bool = False   # runs every time (its effect is the point, or it is idempotent)

    def load(self):
        return import_module(self.module)


STAGES = [
    Stage("data", "runner.stages.data", ("data",), (),
          reads="the data source (shipped JSONL or a hub dataset slice)",
          writes="data/train.jsonl, data/test.jsonl"),
    Stage("train", "runner.stages.train", ("model", "train", "compute"), ("data",),
          reads="data/train.jsonl, data/test.jsonl and the base model",
          writes="an MLflow run with the fine-tuned model, metrics and a loss plot"),
    Stage("register", "runner.stages.register", ("register", "compute.kind", "azure.workspace_name"), ("train",),
          reads="the MLflow model of the train stage",
          writes="a new version of the registered model"),
    Stage("deploy", "runner.stages.deploy", ("deploy", "compute.kind", "azure.workspace_name"), ("register",),
          reads="the registered model version",
          writes="a scoring endpoint (local server or Azure managed online endpoint) and its key"),
    Stage("chat", "runner.stages.chat", ("chat",), ("deploy",),
          reads="the endpoint URL and key",
          writes="nothing: prints the answers of the Prompt flow flow", always=True),
    Stage("teardown", "runner.stages.teardown", (), ("deploy",),
          reads="the endpoint recorded by deploy",
          writes="nothing: stops the local server or deletes the Azure endpoint", always=True),
]

BY_NAME = {s.name: s for s in STAGES}


def selected(names):
    """Stages named in the spec, in pipeline order."""
    return [s for s in STAGES if s.name in names]
