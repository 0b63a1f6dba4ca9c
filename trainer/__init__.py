"""Fine-tuning entry point: `python -m trainer --spec spec.yaml --train-file ... --eval-file ... --output-dir ...`.

Runs the same way on this machine and inside the Azure ML job. Imports nothing from the runner,
Hydra or Azure; heavy libraries are imported where they are used.
"""
