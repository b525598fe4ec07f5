"""Helpers of ``benchmarks/peers.py``: its run (``run``), sizes (``sizes``), row names
(``rows``), each system's side of the comparison (``capsuleside``; ``mpside``, with the
code its workers run, ``mpworker``; ``rayside``) and its tables (``report``). Not a
benchmark, and imports nothing itself: ``peers.py`` imports this package while
``benchmarks/`` is on ``sys.path``, and ``run`` imports the other helpers it needs first.
"""
