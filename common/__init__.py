"""What training and serving both need, and nothing else: the rules of a chat row (common/chats.py), the
generation settings and their defaults (common/generation.py), atomic file writes (common/files.py).

Standard library only. It ships in both Azure ML code folders: the training job's (trainer/ + common/) and the
deployment's (serving/ + common/); the runner imports it too.
"""
