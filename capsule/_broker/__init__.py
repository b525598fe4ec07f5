"""The broker: admission, per-message authorization, routing and audit of container messages."""
