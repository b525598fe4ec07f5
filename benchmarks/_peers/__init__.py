"""Helpers of ``benchmarks/peers.py``: its sizes, and each system's side of the comparison
(``capsuleside``, ``mpside`` with the worker code ``mpworker``, ``rayside``) and the
tables (``report``). Not a benchmark, and imports nothing itself: ``peers.py`` imports
this package first, while ``benchmarks/`` is still on ``sys.path``, and its modules then.
"""
