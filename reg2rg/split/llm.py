"""The LLM report splitter: an OpenAI-compatible chat-completions endpoint (vLLM serving
Qwen2.5-14B-Instruct by default) asked, with the versioned prompt of `prompt.py`, to sort a report's
sentences into the 10 regions plus `others`.

- Structured output: the answer is constrained to `answer.ANSWER_SCHEMA` by the OpenAI `response_format`
  (`{"type": "json_schema", ...}`, which vLLM implements, 0.10.2 of envs/vllm.yaml and later); `structured_output:
  guided_json` sends vLLM 0.10's own `extra_body` field instead (ignored from vLLM 0.12 on), `none` nothing.
  vLLM's newer `structured_outputs` field is not offered: vLLM 0.10.2 ignores it without a word.
- Before the first request of a run, one probe (`PROBE_MESSAGES`, a request whose unconstrained answer is a
  plain word) checks that the server enforces the schema: a server that ignores the constraint answers the word
  and the run stops with a ConfigError, instead of every report failing validation (or passing by luck).
- Temperature 0 and a fixed seed; at most `concurrency` requests in flight; a timeout per request.
- Retries with exponential backoff on timeouts, refused connections, HTTP 429 and 5xx, and on answers that
  fail validation (then with a repair turn that quotes the problem). Other HTTP errors (400, 401, 404...)
  fail at once: asking again cannot help.
- Every answer is validated (`answer.parse_answer` + `answer.validate_answer`). One that stays invalid is
  recorded as a failure with the reason and the raw answer; it never becomes an empty region.
- Results go to a content-addressed cache (`cache.SplitCache`) as soon as they are known.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from reg2rg.errors import ConfigError
from reg2rg.split.answer import ANSWER_SCHEMA, AnswerError, parse_answer, validate_answer
from reg2rg.split.answer_store import SplitCache, cache_key
from reg2rg.split.prompt import PROMPT_VERSION, build_messages, repair_message

log = logging.getLogger(__name__)

STRUCTURED_OUTPUT_MODES = ("response_format", "guided_json", "none")
# modes that the pinned server (envs/vllm.yaml: vLLM 0.10.2) does not honour, and why
UNHONOURED_MODES = {"structured_outputs": "vLLM 0.10.2 (envs/vllm.yaml) ignores the structured_outputs field "
                                          "without an error (it came with vLLM 0.11); use response_format"}
# A request whose unconstrained answer violates ANSWER_SCHEMA: only a server that enforces the schema answers JSON.
PROBE_MESSAGES = [
    {"role": "system", "content": "You answer in plain words."},
    {"role": "user", "content": "Reply with the single word OK and nothing else: no JSON, no braces, no quotes."},
]
ENV_BASE_URL = "REG2RG_LLM_BASE_URL"
ENV_MODEL = "REG2RG_LLM_MODEL"
DEFAULT_API_KEY_ENV = "REG2RG_LLM_API_KEY"


@dataclass
class LLMSettings:
    """Where and how to ask. Unset (None) base_url / model come from the environment (REG2RG_LLM_BASE_URL,
    REG2RG_LLM_MODEL), then from the defaults; the API key only ever from the environment variable named by
    `api_key_env` (a vLLM server started without --api-key accepts any key, so "EMPTY" is the fallback)."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = DEFAULT_API_KEY_ENV
    timeout_s: float = 120.0
    max_attempts: int = 4
    backoff_s: float = 2.0
    backoff_max_s: float = 60.0
    concurrency: int = 8
    max_tokens: int = 4096
    temperature: float = 0.0
    seed: int | None = 0
    structured_output: str = "response_format"

    DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
    DEFAULT_MODEL = "Qwen/Qwen2.5-14B-Instruct"

    def resolved(self, environ=None) -> "LLMSettings":
        env = os.environ if environ is None else environ
        out = LLMSettings(**asdict(self))
        out.base_url = self.base_url or env.get(ENV_BASE_URL) or self.DEFAULT_BASE_URL
        out.model = self.model or env.get(ENV_MODEL) or self.DEFAULT_MODEL
        if out.structured_output in UNHONOURED_MODES:
            raise ConfigError(f"splitter structured_output {out.structured_output!r}: "
                              f"{UNHONOURED_MODES[out.structured_output]}")
        if out.structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ConfigError(f"splitter structured_output {out.structured_output!r}: use one of "
                              f"{', '.join(STRUCTURED_OUTPUT_MODES)}")
        if out.max_attempts < 1 or out.concurrency < 1 or out.timeout_s <= 0:
            raise ConfigError("splitter: max_attempts and concurrency must be >= 1 and timeout_s > 0")
        return out

    def api_key(self, environ=None) -> str:
        env = os.environ if environ is None else environ
        return env.get(self.api_key_env) or "EMPTY"

    @classmethod
    def from_config(cls, cfg: dict | None) -> "LLMSettings":
        cfg = dict(cfg or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(cfg) - known - {"serve"})
        if unknown:
            raise ConfigError(f"splitter llm: unknown setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in cfg.items() if k in known})


@dataclass
class SplitRecord:
    """The outcome for one report (what the cache stores)."""

    key: str
    status: str  # "ok" | "failed"
    split: dict | None = None  # answer.Split.to_json()
    reason: str | None = None
    raw: str | None = None  # the last raw answer (failures), or the accepted one
    attempts: int = 0
    errors: list = field(default_factory=list)  # [{attempt, kind, message}]
    model: str | None = None
    prompt_version: str = PROMPT_VERSION
    cached: bool = False

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("cached")
        return d


class _Retryable(Exception):
    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


class _Fatal(Exception):
    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


class LLMSplitter:
    """Split reports through an OpenAI-compatible endpoint (see the module docstring)."""

    def __init__(self, settings: LLMSettings | None = None, cache: SplitCache | str | None = None,
                 retry_failed: bool = True, environ=None, sleep: Callable[[float], None] = time.sleep):
        from openai import OpenAI

        self.settings = (settings or LLMSettings()).resolved(environ)
        self.cache = cache if isinstance(cache, SplitCache) else SplitCache(cache)
        self.retry_failed = retry_failed
        self._sleep = sleep
        self.client = OpenAI(base_url=self.settings.base_url, api_key=self.settings.api_key(environ),
                             timeout=self.settings.timeout_s, max_retries=0)
        self.requests_sent = 0  # report requests (not the schema probe)
        self._checked = False  # the server's enforcement of the schema (check_enforcement)
        self._lock = threading.Lock()
        for name in ("httpx", "httpx2"):  # one INFO line per request otherwise
            logging.getLogger(name).setLevel(logging.WARNING)

    # ------------------------------------------------------------------------------------------ one call
    def _structured(self) -> dict:
        mode = self.settings.structured_output
        if mode == "response_format":
            return {"response_format": {"type": "json_schema",
                                        "json_schema": {"name": "region_split", "schema": ANSWER_SCHEMA,
                                                        "strict": True}}}
        if mode == "guided_json":
            return {"extra_body": {"guided_json": ANSWER_SCHEMA}}
        return {}

    def _ask(self, messages: list[dict], count: bool = True) -> str | None:
        import openai

        s = self.settings
        kwargs = {"model": s.model, "messages": messages, "temperature": s.temperature, "max_tokens": s.max_tokens,
                  **self._structured()}
        if s.seed is not None:
            kwargs["seed"] = s.seed
        if count:
            with self._lock:
                self.requests_sent += 1
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except openai.APITimeoutError:
            raise _Retryable("timeout", f"no answer within {s.timeout_s:g} s") from None
        except openai.APIConnectionError as err:
            raise _Retryable("connection", f"cannot reach {s.base_url}: {err}") from None
        except openai.APIStatusError as err:
            code = err.status_code
            text = " ".join(str(getattr(err, "message", err)).split())[:300]
            if code == 429 or code >= 500:
                raise _Retryable(f"HTTP {code}", text) from None
            raise _Fatal(f"HTTP {code}", text) from None
        if not resp.choices:
            raise AnswerError("empty", "the response has no choices")
        choice = resp.choices[0]
        content = choice.message.content
        if getattr(choice, "finish_reason", None) == "length":
            raise _AnswerWithRaw(AnswerError("truncated", f"the answer hit max_tokens ({s.max_tokens})"), content)
        return content

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        return min(s.backoff_max_s, s.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)

    def split_one(self, report: str) -> SplitRecord:
        """Ask (with retries) and validate; never raises for a bad answer or an unreachable server."""
        s = self.settings
        key = cache_key(report, PROMPT_VERSION, s.model)
        rec = SplitRecord(key=key, status="failed", model=s.model)
        messages = build_messages(report)
        extra: list[dict] = []
        for attempt in range(1, s.max_attempts + 1):
            rec.attempts = attempt
            raw = None
            try:
                raw = self._ask(messages + extra)
                data = parse_answer(raw)
                split = validate_answer(report, data)
            except _AnswerWithRaw as err:
                rec.raw = err.raw
                rec.errors.append({"attempt": attempt, "kind": err.error.kind, "message": str(err.error)})
                extra = repair_message(err.raw, str(err.error))
            except AnswerError as err:
                rec.raw = raw
                rec.errors.append({"attempt": attempt, "kind": err.kind, "message": str(err)})
                extra = repair_message(raw, str(err))
            except _Retryable as err:
                rec.errors.append({"attempt": attempt, "kind": err.kind, "message": str(err)})
            except _Fatal as err:
                rec.errors.append({"attempt": attempt, "kind": err.kind, "message": str(err)})
                break
            else:
                rec.status, rec.split, rec.raw, rec.reason = "ok", split.to_json(), raw, None
                return rec
            if attempt < s.max_attempts:
                self._sleep(self._backoff(attempt))
        last = rec.errors[-1] if rec.errors else {"kind": "unknown", "message": ""}
        rec.reason = f"{last['kind']} after {rec.attempts} attempt(s): {last['message']}"
        return rec

    def check_enforcement(self) -> bool:
        """Send PROBE_MESSAGES under the constraint: ConfigError unless the answer is JSON of ANSWER_SCHEMA (the
        server ignores `structured_output`). True once checked; False when it could not be (mode none, or no
        answer after max_attempts: the reports then fail with the same errors, recorded)."""
        s = self.settings
        if s.structured_output == "none":
            log.warning("structured_output none: answers are not constrained to the schema, only validated")
            return False
        for attempt in range(1, s.max_attempts + 1):
            try:
                content = self._ask(PROBE_MESSAGES, count=False)
            except _AnswerWithRaw as err:
                content = err.raw
            except AnswerError as err:
                content = str(err)
            except _Retryable as err:
                log.warning("schema probe, attempt %d: %s", attempt, err)
                if attempt < s.max_attempts:
                    self._sleep(self._backoff(attempt))
                continue
            except _Fatal as err:
                raise ConfigError(f"{s.base_url} refused the schema probe with structured_output "
                                  f"{s.structured_output!r} ({err.kind}: {err}); see reg2rg/split/llm.py") from None
            try:
                parse_answer(content)
            except AnswerError as err:
                raise ConfigError(
                    f"{s.base_url} ({s.model}) does not enforce the answer schema with structured_output "
                    f"{s.structured_output!r}: asked for a plain word under the schema, it answered "
                    f"{str(content)[:120]!r} ({err}). vLLM 0.10 honours response_format and guided_json, vLLM >= 0.12 "
                    "only response_format") from None
            log.info("schema probe: %s enforces the answer schema (structured_output %s)", s.base_url,
                     s.structured_output)
            return True
        log.warning("schema probe: no answer from %s after %d attempt(s); not checked", s.base_url, s.max_attempts)
        return False

    # ------------------------------------------------------------------------------------------ many
    def lookup(self, report: str) -> SplitRecord | None:
        key = cache_key(report, PROMPT_VERSION, self.settings.model)
        hit = self.cache.get(key)
        if hit is None or (hit.get("status") != "ok" and self.retry_failed):
            return None
        fields = {k: v for k, v in hit.items() if k in SplitRecord.__dataclass_fields__}
        return SplitRecord(**fields, cached=True)

    def split_many(self, reports: Iterable[str], on_result: Callable[[int, SplitRecord], None] | None = None,
                   progress: bool = True) -> list[SplitRecord]:
        """Split every report (same order out); cached results are not asked again. Each new result is
        cached at once and passed to `on_result(index, record)`; an exception there (or an interrupt) stops
        the run: what was finished stays cached."""
        from tqdm import tqdm

        reports = list(reports)
        out: list[SplitRecord | None] = [None] * len(reports)
        todo: dict[str, list[int]] = {}
        for i, report in enumerate(reports):
            hit = self.lookup(report)
            if hit is not None:
                out[i] = hit
            else:
                todo.setdefault(report, []).append(i)
        n_cached = sum(r is not None for r in out)
        log.info("split: %d reports, %d from the cache, %d distinct to ask %s (%s, at most %d at a time)",
                 len(reports), n_cached, len(todo), self.settings.base_url, self.settings.model,
                 self.settings.concurrency)
        if todo and not self._checked:
            self._checked = self.check_enforcement()
        bar = tqdm(total=len(todo), desc="split reports", unit="report", disable=not progress or not todo)
        pool = ThreadPoolExecutor(max_workers=self.settings.concurrency)
        pending: dict = {}
        try:
            pending = {pool.submit(self.split_one, report): report for report in todo}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    report = pending.pop(fut)
                    rec = fut.result()
                    self.cache.put(rec.key, rec.to_json())
                    if rec.status != "ok":
                        log.warning("split failed (%s)", rec.reason)
                    for i in todo[report]:
                        out[i] = rec
                        if on_result is not None:
                            on_result(i, rec)
                    bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # stopped early: what was in flight still finishes...
            for fut in pending:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self.cache.put(fut.result().key, fut.result().to_json())  # ...and is kept
            bar.close()
        return out  # type: ignore[return-value]


class _AnswerWithRaw(Exception):
    def __init__(self, error: AnswerError, raw: str | None):
        self.error = error
        self.raw = raw
        super().__init__(str(error))
