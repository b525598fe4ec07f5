"""Helpers of ``benchmarks/broker.py``: its socket floor (``floor``), its in-process
measures of the broker's per-message work (``inprocess``) and of the variants' routing
(``variants``). Not a benchmark, and imports nothing itself: ``broker.py`` imports this
package first, while ``benchmarks/`` is still on ``sys.path``, and its modules then.
"""
