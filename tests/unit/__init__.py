"""Unit tests: functions, parsers and rules in process; no model trained, no server, no Azure venv."""
