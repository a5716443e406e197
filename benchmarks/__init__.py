"""kiwitrio's benchmarks: ``python -m benchmarks`` (or ``python benchmarks/run.py``) runs the
suite against aio-pika and kiwiPy; see ``benchmarks/run.py``.

Nothing here may import kiwitrio or aio-pika: the kiwiPy client imports this package from an
environment of its own.
"""
