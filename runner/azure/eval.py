"""eval (Azure ML): the training job compared the model with its base on the GPU node right after training (the
base model was there already: no second bill); this stage takes the figures the train stage fetched from the job."""

import json
import shutil

from ..errors import UserError
from ..stages import evaluation
from ..stages.evaluation import is_current  # noqa: F401  (the registry's contract: run, is_current, plan)

SETTINGS = ("max_new_tokens",)  # besides rows and samples, which the job caps by the eval rows it had


def run(spec, ctx) -> dict:
    train = ctx.upstream("train")
    fetched = train.get("eval_dir")
    job = train.get("job_name")
    if not fetched or not (ctx.run_dir / fetched / "metrics.json").is_file():
        raise UserError(
            f"job {job} left no eval figures (outputs/eval/metrics.json): run training again, which "
            f"evaluates at its end: {ctx.again.command('train', 'eval', extra=('force=true',))}"
        )
    metrics = json.loads((ctx.run_dir / fetched / "metrics.json").read_text())
    wanted = spec["eval"]
    changed = [k for k in ("rows", "samples") if metrics.get("settings", {}).get(k) != wanted[k]]
    changed += [k for k in SETTINGS if metrics.get(k) != wanted[k]]
    if changed:
        raise UserError(
            f"job {job} evaluated with other eval settings ({', '.join(f'eval.{k}' for k in changed)}); "
            "on Azure ML the eval runs inside the training job: re-run both, "
            f"{ctx.again.command('train', 'eval', extra=('force=true',))} (with the new settings), or set them back"
        )
    folder = ctx.run_dir / "eval"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(ctx.run_dir / fetched, folder)
    ctx.log(f"[eval] figures of job {job} (computed on its node after training)")
    return evaluation.finish(spec, ctx, folder)  # the job logged them to its MLflow run in the workspace


def plan(spec, ctx) -> list[str]:
    return [
        *evaluation.plan(spec, ctx),
        "where:  inside the training job, on its node, right after training (no second job, no second bill); "
        "this stage reads its outputs/eval",
    ]
