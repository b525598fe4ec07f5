"""The supervisor: container lifecycle, restart strategies, and the host program's API."""
