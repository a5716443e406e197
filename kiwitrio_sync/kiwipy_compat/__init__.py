"""kiwiPy 0.9's public namespace, provided by kiwitrio: ``kiwipy`` for code written against it.

``import kiwitrio_sync.kiwipy_compat as kiwipy`` gives the names; to make ``import kiwipy``
itself resolve here (for plumpy and AiiDA, which import kiwipy), call
:func:`kiwitrio_sync.install_kiwipy_alias` before anything imports kiwipy. The submodules
(``kiwipy.rmq``, ``kiwipy.futures``, ``kiwipy.exceptions``, ``kiwipy.communications``...) are
here under the same names. The communicators are :class:`kiwitrio_sync.RmqThreadCommunicator`
(``kiwipy.rmq.RmqThreadCommunicator``) and :class:`LocalCommunicator` (on kiwitrio's in-memory
broker). What still differs from kiwiPy is listed in docs/coming-from-kiwipy.md.
"""

import logging as _logging

from . import communicate, communications, exceptions, filters, futures, local, rmq, utils

# As kiwiPy's package does: each submodule's __all__ is also the package's.
from .communicate import *  # noqa: F403
from .communications import *  # noqa: F403
from .exceptions import *  # noqa: F403
from .filters import *  # noqa: F403
from .futures import *  # noqa: F403
from .local import *  # noqa: F403
from .utils import *  # noqa: F403

#: The kiwiPy version whose API this reproduces.
__version__ = "0.9.0"

# kiwiPy's logger name, so that logging configured for "kiwipy" keeps a home.
_logging.getLogger("kiwipy").addHandler(_logging.NullHandler())

__all__ = [
    "communicate", "communications", "exceptions", "filters", "futures", "local", "rmq", "utils",
]
__all__ += communicate.__all__ + communications.__all__ + exceptions.__all__
__all__ += filters.__all__ + futures.__all__ + local.__all__ + utils.__all__
