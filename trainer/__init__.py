"""Fine-tuning entry point: `python -m trainer --spec spec.yaml --train-file ... --eval-file ... --output-dir ...`.

Runs the same way on this machine and inside the Azure ML job. Imports nothing from the runner,
Hydra or Azure; heavy libraries are imported where they are used.
"""

import logging

# torchao (8-bit optimizer states) warns at import about CUDA kernels a CPU build of torch cannot load, and about
# enums torch now handles itself; neither matters to its optimizers, which are plain PyTorch
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
