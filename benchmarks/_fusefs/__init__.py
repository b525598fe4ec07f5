"""Helpers of ``benchmarks/fusefs.py``: its report (``report``) and its large volume
(``volume``). Not a benchmark, and imports nothing itself: ``fusefs.py`` imports this
package first, while ``benchmarks/`` is still on ``sys.path``, and its modules then.
"""
