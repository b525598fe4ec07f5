"""The container side: the Feature API feature code uses, and the runtime that serves it."""
