"""``kiwipy.rmq.threadcomms``: the thread communicator, its task queues and incoming tasks."""

from ..._kiwipy import RmqThreadCommunicator, RmqThreadIncomingTask, RmqThreadTaskQueue, connect

__all__ = ["RmqThreadCommunicator", "RmqThreadIncomingTask", "RmqThreadTaskQueue", "connect"]
