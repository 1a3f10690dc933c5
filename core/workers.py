"""Beam's multi-processing SDK workers, forked from the launching process instead of started afresh.

With `--direct_running_mode=multi_processing`, Beam's FnApiRunner starts each worker as
`python -m apache_beam.runners.worker.sdk_worker_main`: a new interpreter that imports Beam again
before it does any work. Measured on this project's 2-core machine (bench/run, 100k documents),
that start-up was 0.6 CPU-s a worker, paid by both workers at once while the job waited: a
2-worker convert took 2.6 s against 1.9 s with one worker in-process.

`ForkingFnApiRunner` (the runner `core.options` names for that mode) keeps everything else of the
FnApiRunner and changes only how a worker process comes to be:

    run_via_runner_api ─▶ fork one zygote per worker (Beam already imported, no gRPC server yet)
                      ─▶ the runner starts its gRPC servers ─▶ each worker handler hands its
                         endpoints and options to a zygote through a pipe ─▶ the zygote runs
                         Beam's own `sdk_worker_main.create_harness(...)`, then exits

A zygote is forked while the process runs one Python thread and before the runner has created
any gRPC server or channel, the state in which forking is safe; when that does not hold (another
thread runs, no `os.fork`, not Linux), Beam's own subprocess workers are started, as before.
Workers are real processes either way: they share the parent's memory copy-on-write, and talk to
the runner only over the Fn API, exactly as the subprocess workers do.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any, NoReturn

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.portability import python_urns
from apache_beam.portability.api import endpoints_pb2
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
from google.protobuf import json_format, text_format

__all__ = ["ForkingFnApiRunner", "WorkerZygotes", "FORKED_WORKER_URN"]

FORKED_WORKER_URN = "cfysnap:env:forked_python_sdk:v1"
"""The environment a `ForkingFnApiRunner` gives Beam's subprocess environments for one run."""
STOP_TIMEOUT_S = 60.0
"""How long a worker may take to exit once the runner has closed its control channel."""
_LOG = logging.getLogger(__name__)
_POOLS: dict[str, WorkerZygotes] = {}
"""The zygotes of the runs in progress, by the key their environment's payload names."""


class WorkerZygotes:
    """Processes forked from this one, each waiting to become one SDK worker.

    `start(env)` hands a zygote the environment Beam would have given a worker subprocess
    (`CONTROL_API_SERVICE_DESCRIPTOR`, `LOGGING_API_SERVICE_DESCRIPTOR`, `PIPELINE_OPTIONS`,
    `WORKER_ID`); `close()` releases the zygotes not used (they exit at once) and reaps every
    process, killing a worker still running after `STOP_TIMEOUT_S`.
    """

    def __init__(self, zygotes: list[tuple[int, int]]) -> None:
        self._idle = list(zygotes)  # (pid, write end of its pipe)
        self._started: list[int] = []
        self._lock = threading.Lock()

    @classmethod
    def fork(cls, count: int) -> WorkerZygotes | None:
        """`count` zygotes, or None where forking is not known to be safe here."""
        if not (sys.platform.startswith("linux") and hasattr(os, "fork")):
            return None
        if threading.active_count() != 1:
            _LOG.debug("workers started by Beam: %d Python threads run", threading.active_count())
            return None
        zygotes: list[tuple[int, int]] = []
        try:
            for _ in range(count):
                read, write = os.pipe()
                pid = os.fork()
                if pid == 0:  # the zygote: only the read end of its own pipe stays open
                    os.close(write)
                    for _, other in zygotes:
                        os.close(other)
                    _zygote(read)
                os.close(read)
                zygotes.append((pid, write))
        except OSError:
            cls(zygotes).close()
            return None
        return cls(zygotes)

    def available(self) -> bool:
        with self._lock:
            return bool(self._idle)

    def start(self, env: dict[str, str]) -> int:
        """Make a zygote the worker `env` describes; its process id."""
        with self._lock:
            pid, write = self._idle.pop(0)
            self._started.append(pid)
        try:
            with os.fdopen(write, "wb") as pipe:
                pipe.write(json.dumps(env).encode())
        except OSError as exc:
            raise RuntimeError(f"could not hand worker {env.get('WORKER_ID')} to its process: {exc}") from exc
        return pid

    def wait(self, pid: int, timeout: float = STOP_TIMEOUT_S) -> int:
        """The worker's exit status, once it has exited (killed after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return 0  # reaped already
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                _LOG.warning("worker process %d did not exit; killing it", pid)
                os.kill(pid, signal.SIGKILL)
                timeout, deadline = 0.0, float("inf")
            time.sleep(0.005)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            started = list(self._started)
        for pid, write in idle:
            os.close(write)  # end of file: the zygote exits without becoming a worker
            started.append(pid)
        for pid in started:
            self.wait(pid)


def _zygote(read: int) -> NoReturn:
    """A zygote's life: wait for a worker's environment, run Beam's SDK harness with it, exit.

    Never returns and never runs the parent's exit handlers or flushes its buffers (`os._exit`).
    """
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
        if not data:  # released unused
            os._exit(0)
        env = json.loads(data)
        os.environ.update(env)
        _quiet_like_worker_site()
        from apache_beam.runners.worker import sdk_worker_main

        fn_log_handler, harness, _ = sdk_worker_main.create_harness(os.environ)
        try:
            harness.run()
        finally:
            if fn_log_handler:
                fn_log_handler.close()
        code = 0
    except BaseException:  # noqa: BLE001 - a worker's failure is reported by its runner
        logging.getLogger(__name__).critical("forked SDK worker failed", exc_info=True)
    finally:
        os._exit(code)


def _quiet_like_worker_site() -> None:
    """What `core/worker_site` does for a subprocess worker: with CFYSNAP_WORKER_LOG_LEVEL set
    (a command run without --debug), the worker's records go only to the runner, not to the
    terminal handlers this process inherited."""
    level = os.environ.get("CFYSNAP_WORKER_LOG_LEVEL")
    if level:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(logging.NullHandler())
        root.setLevel(level)


@worker_handlers.WorkerHandler.register_environment(FORKED_WORKER_URN, bytes)
class _ForkedWorkerHandler(worker_handlers.SubprocessSdkWorkerHandler):
    """A subprocess worker handler whose worker is a zygote of its run (payload: the run's key
    and Beam's worker command line, used when no zygote is left)."""

    def __init__(self, payload: bytes, state: Any, provision_info: Any, grpc_server: Any) -> None:
        spec = json.loads(payload)
        super().__init__(spec["command"].encode(), state, provision_info, grpc_server)
        self._pool = _POOLS.get(spec["pool"])
        self._pid: int | None = None

    def start_worker(self) -> None:
        if self._pool is None or not self._pool.available():
            super().start_worker()
            return
        def descriptor(url: str) -> str:
            return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))

        env = {
            "CONTROL_API_SERVICE_DESCRIPTOR": descriptor(self.control_address),
            "LOGGING_API_SERVICE_DESCRIPTOR": text_format.MessageToString(
                self.logging_api_service_descriptor()
            ),
            "PIPELINE_OPTIONS": json_format.MessageToJson(
                self.provision_info.provision_info.pipeline_options
            ),
        }
        if self.worker_id:
            env["WORKER_ID"] = self.worker_id
        self._pid = self._pool.start(env)

    def stop_worker(self) -> None:
        if self._pid is None:
            super().stop_worker()
            return
        assert self._pool is not None
        code = self._pool.wait(self._pid)
        if code:
            _LOG.warning("worker process %d exited with code %d", self._pid, code)


class ForkingFnApiRunner(FnApiRunner):
    """The FnApiRunner, with multi-processing workers forked from a zygote (see the module)."""

    def run_via_runner_api(self, pipeline_proto: Any, options: PipelineOptions) -> Any:
        subprocess_envs = [
            env
            for env in pipeline_proto.components.environments.values()
            if env.urn == python_urns.SUBPROCESS_SDK
        ]
        running_mode = options.view_as(DirectOptions).direct_running_mode
        zygotes = None
        if subprocess_envs and running_mode == "multi_processing":
            zygotes = WorkerZygotes.fork(self._num_workers * len(subprocess_envs))
        if zygotes is None:
            return super().run_via_runner_api(pipeline_proto, options)
        key = uuid.uuid4().hex
        _POOLS[key] = zygotes
        try:
            _fork_workers_of(subprocess_envs, key)
            return super().run_via_runner_api(pipeline_proto, options)
        finally:
            del _POOLS[key]
            zygotes.close()


def _fork_workers_of(environments: Iterable[Any], key: str) -> None:
    for env in environments:
        env.payload = json.dumps({"pool": key, "command": env.payload.decode()}).encode()
        env.urn = FORKED_WORKER_URN
