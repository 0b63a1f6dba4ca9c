"""The Azure ML backend (compute.kind: azureml): train, register, deploy and teardown in a workspace.

resources.py builds every Azure resource as a plain dict and writes it as YAML (no azure import, so plan
mode stays fast and offline); client.py loads those same dicts with azure-ai-ml; one module per stage.
"""
