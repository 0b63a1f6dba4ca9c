"""Declarative runner: Hydra config groups -> one validated run spec -> stages run in order.

Importing this package stays cheap: heavy libraries (torch, transformers, datasets, mlflow,
azure, promptflow) are imported inside the stage that needs them.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
