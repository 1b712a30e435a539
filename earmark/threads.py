"""Thread pools of the native libraries underneath (OpenBLAS, via numpy and FAISS).

Earmark parallelises batch work itself: one worker process per core for ``fp index -j N``
and ``fp scan -j N``, and its own voting threads for one query.  The BLAS libraries
also start a thread per core for every matrix product (the derivation tier's pitchgram),
and OpenBLAS's idle threads busy-wait.  In a batch that is pure loss: measured on the dev
corpus (2 cores), ``fp index -j 1`` burned 64 s of CPU for 56 s of wall time, the extra
9 s spinning, with no gain in wall time; at ``-j 2`` the spinning threads of one worker
took cores from the other (33.3 s wall, against 30.3 s single-threaded).  The batch
paths therefore run BLAS single-threaded, and so does every ``fp`` command: in matching,
the only BLAS call is the derivation tier's small pitchgram product, and on 40 scan files
(1.36 h) two BLAS threads took 16.1 s of CPU for 11.9 s of wall time, one thread 11.9 s
for the same 11.9 s.  A program that calls Earmark from Python can do the same with
:func:`single_threaded_blas`.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the system has one (``taskset``,
    a container's cpuset), else every logical CPU.  ``os.cpu_count()`` counts the host's CPUs,
    and one voting thread or worker per host CPU oversubscribes a process pinned to fewer.

    Examples
    --------
    >>> from earmark.threads import usable_cpus
    >>> usable_cpus() >= 1
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity masks (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def single_threaded_blas() -> AbstractContextManager:
    """Limit BLAS libraries to one thread; the old limits return when the block ends.

    Forked worker processes inherit the limit (OpenBLAS keeps it in process memory).

    Examples
    --------
    >>> import numpy as np
    >>> from earmark.threads import single_threaded_blas
    >>> with single_threaded_blas():
    ...     float((np.ones((64, 64)) @ np.ones(64))[0])
    64.0
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")
