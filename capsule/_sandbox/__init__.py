"""The container sandbox: Linux isolation primitives and the order they are applied in."""
