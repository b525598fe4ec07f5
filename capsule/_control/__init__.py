"""The control socket of a running app: protocol, server (``capsule run``) and CLI client."""
