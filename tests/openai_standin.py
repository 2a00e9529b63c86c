"""A stand-in for an OpenAI-compatible chat-completions server (what `vllm serve` speaks), for tests.

A real HTTP server on 127.0.0.1 (http.server in a thread) that answers `POST /v1/chat/completions`,
`GET /v1/models` and `GET /health`. What it answers is scripted: `behaviours` is a list consumed one per
chat request (then `default` for the rest), each one of

    good        a correct split: every sentence of the request, sorted by reg2rg's rules splitter
    malformed   content that is not JSON
    invented    a correct split plus a sentence that is not in the report
    duplicate   a correct split with one sentence placed twice
    missing     a correct split with one sentence left out
    slow        sleeps `slow_s` seconds, then answers good (a client with a shorter timeout gives up)
    500         HTTP 500 with an OpenAI-style error body
    400         HTTP 400 (a request the server rejects; not worth retrying)
    truncated   a correct split cut in half, finish_reason "length"

`requests` counts chat requests, `bodies` keeps their JSON bodies, `max_in_flight` the most requests
handled at the same time. `stop()` closes the port (then the server is "down").

Structured output: `honours` names the request fields whose JSON schema the server enforces (`response_format`,
`guided_json`, `structured_outputs`; all by default; vLLM 0.10.2 honours the first two, vLLM >= 0.12 only the
first). A request that is not a split request (no sentence list: the splitter's schema probe) is answered as a
model would: under an honoured constraint an object of the schema (every key, empty lists), else the plain word
its prompt asks for. Such requests consume no behaviour and are counted in `probes` (`probe_bodies`), not in
`requests`.

Run as a program (`python tests/openai_standin.py --port N [--behaviour good]`) it serves until killed:
the tests use that as the command of a managed server.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reg2rg.split.answer import ANSWER_KEYS, answer_from_split_groups  # noqa: E402
from reg2rg.split.prompt import SENTENCES_MARKER, sentences_from_messages  # noqa: E402
from reg2rg.split.rules import assign_sentence  # noqa: E402

BEHAVIOURS = ("good", "malformed", "invented", "duplicate", "missing", "slow", "500", "400", "truncated")
STRUCTURED_FIELDS = ("response_format", "guided_json", "structured_outputs")


def constraint_field(body: dict) -> str | None:
    """Which field of a chat request carries a JSON schema constraint."""
    if (body.get("response_format") or {}).get("type") == "json_schema":
        return "response_format"
    if "guided_json" in body:
        return "guided_json"
    if (body.get("structured_outputs") or {}).get("json") is not None:
        return "structured_outputs"
    return None


def is_split_request(body: dict) -> bool:
    return any(m.get("role") == "user" and SENTENCES_MARKER in (m.get("content") or "") for m in body["messages"])


def good_answer(messages: list[dict]) -> dict:
    sentences = sentences_from_messages(messages)
    report = " ".join(sentences)
    return answer_from_split_groups(report, [assign_sentence(s) for s in sentences])


class StandinServer:
    def __init__(self, behaviours=(), default: str = "good", slow_s: float = 2.0, port: int = 0,
                 honours=STRUCTURED_FIELDS):
        for b in (*behaviours, default):
            if b not in BEHAVIOURS:
                raise ValueError(f"unknown behaviour {b!r}")
        unknown = set(honours) - set(STRUCTURED_FIELDS)
        if unknown:
            raise ValueError(f"unknown structured output field(s) {sorted(unknown)}")
        self.honours = set(honours)
        self.probes = 0
        self.probe_bodies: list[dict] = []
        self.behaviours = list(behaviours)
        self.default = default
        self.slow_s = slow_s
        self.requests = 0
        self.bodies: list[dict] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> "StandinServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _next(self) -> str:
        with self._lock:
            self.requests += 1
            return self.behaviours.pop(0) if self.behaviours else self.default

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

            def do_GET(self):
                if self.path.rstrip("/") in ("/health", ""):
                    self._send(200, {})
                elif self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "standin", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not is_split_request(body):
                    with server._lock:
                        server.probes += 1
                        server.probe_bodies.append(body)
                    enforced = constraint_field(body) in server.honours
                    self._reply(body, json.dumps({k: [] for k in ANSWER_KEYS}) if enforced else "OK", "stop")
                    return
                behaviour = server._next()
                with server._lock:
                    server.bodies.append(body)
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    self._answer(behaviour, body)
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _answer(self, behaviour: str, body: dict) -> None:
                if behaviour == "500":
                    self._send(500, {"error": {"message": "internal error (stand-in)", "type": "server_error"}})
                    return
                if behaviour == "400":
                    self._send(400, {"error": {"message": "bad request (stand-in)", "type": "invalid_request"}})
                    return
                if behaviour == "slow":
                    time.sleep(server.slow_s)
                finish = "stop"
                if behaviour == "malformed":
                    content = "Sure! Here are the regions: abdomen -> none, lung -> {"
                else:
                    answer = good_answer(body["messages"])
                    if behaviour == "invented":
                        answer["lung"].append("A 4 cm mass is seen in the left lower lobe.")
                    elif behaviour in ("duplicate", "missing"):
                        key = next(k for k, v in answer.items() if v)
                        if behaviour == "duplicate":
                            other = next(k for k in answer if k != key)
                            answer[other].append(answer[key][0])
                        else:
                            answer[key].pop(0)
                    content = json.dumps(answer)
                    if behaviour == "truncated":
                        content, finish = content[: len(content) // 2], "length"
                self._reply(body, content, finish)

            def _reply(self, body: dict, content: str, finish: str) -> None:
                self._send(200, {
                    "id": f"chatcmpl-standin-{server.requests}", "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model", "standin"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": finish}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

        return Handler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--behaviour", default="good", choices=BEHAVIOURS)
    p.add_argument("--startup-delay", type=float, default=0.0, help="seconds before the port opens")
    p.add_argument("--honours", default=",".join(STRUCTURED_FIELDS),
                   help="comma-separated structured output fields the server enforces ('' for none)")
    args, _ = p.parse_known_args()
    time.sleep(args.startup_delay)
    server = StandinServer(default=args.behaviour, port=args.port, honours=[f for f in args.honours.split(",") if f])
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
