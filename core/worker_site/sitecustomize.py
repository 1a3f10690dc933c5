"""Quiet Beam worker processes, with the collector tuned as in the launching process (not a
module of cfysnap's own: Python imports it at start-up).

The command line puts this folder on the PYTHONPATH of the worker processes Beam starts for
`--direct_running_mode=multi_processing`, with CFYSNAP_WORKER_LOG_LEVEL set (not with
`--debug`). A worker's first log record (Beam's import-time "apitools not found" warning) would
otherwise give its root logger a handler on the terminal, and every later INFO line of the SDK
harness would follow it there, burying the job's own output. With a handler of its own from the
start, the worker's records go only where Beam sends them: to the runner, which logs them in the
main process under cfysnap's logging settings.
"""

import logging
import os

_level = os.environ.get("CFYSNAP_WORKER_LOG_LEVEL")
if _level:
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger().setLevel(_level)

# The thresholds `core.options.GC_THRESHOLD` gives the launching process (measured there; kept
# equal by tests/test_options.py): a worker allocates as many short-lived objects per document.
# Like the logging above, only for the workers of a command run without --debug.
import gc  # noqa: E402

gc.set_threshold(10_000, 10, 10)
