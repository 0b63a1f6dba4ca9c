"""Azure ML backend: the train, register, deploy and teardown stages when compute.kind is azureml.

resources.py builds every Azure resource as a plain dict and writes it as YAML (no azure import, so plan
mode stays fast and offline); backend.py loads those same dicts with azure-ai-ml and submits them.
"""
