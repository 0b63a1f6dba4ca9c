"""The stages that run the same on every backend (data, chat); runner/registry.py says which module runs each stage."""
