"""Start an OpenAI-compatible server (`vllm serve`) for the length of a splitting run, wait until it is
healthy, and stop it afterwards, whatever happens in between.

Used by the workflow when `splitter.llm.serve.enabled` is true (a GPU job that serves, splits and stops);
with an endpoint the user already runs, nothing is started.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from reg2rg.errors import ConfigError, Reg2RGError

log = logging.getLogger(__name__)


class ServerError(Reg2RGError):
    """The managed server did not come up (or died)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on this node now (the OS picks it), for a server started right after."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def vllm_command(model_path: str, port: int, served_model_name: str | None = None, host: str = "127.0.0.1",
                 gpu_memory_utilization: float | None = None, max_model_len: int | None = None,
                 tensor_parallel_size: int | None = None, extra_args=(), executable: str = "vllm") -> list[str]:
    """`vllm serve MODEL --host H --port P [--served-model-name N] ...` as an argument list. The API key is
    not put on the command line (it would show in `ps`): vLLM reads it from VLLM_API_KEY."""
    if not model_path:
        raise ConfigError("splitter llm serve: set model_path (a local folder with Qwen2.5-14B-Instruct)")
    cmd = [executable, "serve", str(model_path), "--host", host, "--port", str(int(port))]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    if gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    if max_model_len is not None:
        cmd += ["--max-model-len", str(int(max_model_len))]
    if tensor_parallel_size is not None:
        cmd += ["--tensor-parallel-size", str(int(tensor_parallel_size))]
    return cmd + [str(a) for a in extra_args]


def server_root(base_url: str) -> str:
    """`http://host:8000/v1` -> `http://host:8000` (vLLM's /health lives at the root)."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def is_healthy(base_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(server_root(base_url) + "/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers (own process group)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("server %d did not stop within %.0f s; killing it", proc.pid, grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def managed_server(command: list[str], base_url: str, log_path: str | Path | None = None,
                   startup_timeout_s: float = 1800.0, poll_s: float = 2.0, stop_grace_s: float = 60.0,
                   env: dict | None = None):
    """Run `command` (in its own process group, output to `log_path`), wait until `base_url`'s /health
    answers 200, yield the process, then stop it (SIGTERM, SIGKILL after `stop_grace_s`). Raises
    ServerError if it exits or stays unhealthy for `startup_timeout_s`."""
    if is_healthy(base_url):
        raise ServerError(f"something already answers at {base_url}; stop it or use it as the endpoint "
                          "(splitter.llm.serve.enabled: false)")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    log.info("starting %s", " ".join(command))
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})
    try:
        t0 = time.monotonic()
        while not is_healthy(base_url):
            if proc.poll() is not None:
                raise ServerError(f"the server exited with status {proc.returncode} before it was healthy"
                                  + (f"; see {log_path}" if log_path else ""))
            if time.monotonic() - t0 > startup_timeout_s:
                raise ServerError(f"the server was not healthy after {startup_timeout_s:.0f} s"
                                  + (f"; see {log_path}" if log_path else ""))
            time.sleep(poll_s)
        log.info("server healthy at %s after %.1f s", base_url, time.monotonic() - t0)
        yield proc
    finally:
        _stop(proc, stop_grace_s)
        if out is not subprocess.DEVNULL:
            out.close()
