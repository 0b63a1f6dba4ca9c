"""Integration tests: one part against the real parts it meets (a trained model, a server on 127.0.0.1, MLflow, promptflow, an Azure venv, the Azure stand-in)."""
