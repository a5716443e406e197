"""The ``kiwitrio`` command line: workers, tasks, RPC and broadcasts from a shell.

    kiwitrio worker mytasks:square --concurrency 4     # run a task worker until Ctrl-C/SIGTERM
    kiwitrio send --json --wait 1 2 3                  # send three tasks, print their results
    seq 100 | kiwitrio send --json --wait              # one task per stdin line
    kiwitrio rpc process-42 status                     # call an RPC subscriber
    kiwitrio broadcast --subject jobs.done '{"pk": 1}' --json
    kiwitrio listen --subject 'jobs.*' --count 10      # print broadcasts as JSON lines
    kiwitrio status                                    # is the broker there? which queues?
    kiwitrio delete mytasks                            # a task queue and its dead letters
    kiwitrio demo                                      # the demo of a source checkout
    kiwitrio bench                                     # its benchmark

``python -m kiwitrio`` is the same command. The options ``--url`` (default ``$KIWITRIO_URL``,
else ``amqp://guest:guest@127.0.0.1:5672/``), ``--message-exchange``, ``--task-exchange``,
``--task-queue`` (as for :func:`kiwitrio.open_communicator`), ``--connect-timeout`` (how long
to keep trying to reach the broker at start: 3 s for send, rpc and broadcast, kiwitrio's
default reconnection policy for worker and listen) and ``-v`` (more logging, and tracebacks on
errors) go before or after the command.

Errors print one line, ``kiwitrio: error: ...``, on stderr (a traceback only with ``-v``).
Exit codes:

    0    success (``worker`` and ``listen`` stopped by SIGINT/SIGTERM also exit 0)
    1    a task or RPC failed remotely (RemoteException), the broker refused the login or
         the vhost (ConnectionRefusedByBroker), or another kiwitrio error
    2    usage error: bad arguments (a URL that cannot be parsed, a subject over 255 bytes),
         bad JSON, MODULE:FUNCTION not importable
    3    unroutable: no RPC subscriber with that identifier, or no such task queue
    4    the broker cannot be reached (ConnectionFailed)
    5    timeout (``--timeout`` expired)
    130  interrupted (Ctrl-C)
"""

from ._common import ExitCode
from ._main import main
from ._parser import build_parser

__all__ = ["ExitCode", "build_parser", "main"]
