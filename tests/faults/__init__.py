"""Fault-injection scenarios: real workloads (worker processes, senders, RPCs, broadcasts)
under connection cuts, broker crashes, killed workers, slow consumers and bad input.

Run with ``pytest tests/faults`` (``-s`` shows the figures line of every scenario). Nothing
here touches the shared broker's node: destructive scenarios cut connections through a TCP
proxy owned by the test or crash a private RabbitMQ node started by the test module.
"""
