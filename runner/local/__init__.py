"""The local backend (compute.kind: local): train, register, deploy and teardown on this machine."""
