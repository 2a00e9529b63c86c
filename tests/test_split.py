"""Report splitting (reg2rg.split): the LLM client against a real local HTTP stand-in of an OpenAI-compatible
server in every mode (good, malformed JSON, invented sentence, sentence placed twice or left out, slow ->
timeout -> retry, 500 then success, 400, down), the cache (a rerun makes zero HTTP calls), resume after an
interruption, bounded concurrency, a managed server started and stopped around a run, and the offline rules
splitter on demo reports and on real CT-RATE report sentences."""
from __future__ import annotations

import json
import socket
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reg2rg import demo
from reg2rg.constants import REGIONS
from reg2rg.split.answer import ANSWER_SCHEMA, AnswerError, parse_answer, validate_answer
from reg2rg.split.answer_store import cache_key
from reg2rg.errors import ConfigError
from reg2rg.split.llm import PROBE_MESSAGES, LLMSettings, LLMSplitter
from reg2rg.split.prompt import PROMPT_VERSION, build_messages, sentences_from_messages
from reg2rg.split.rules import assign_sentence, rules_split
from reg2rg.split.sentences import split_sentences
from reg2rg.split.table import split_report_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openai_standin import StandinServer  # noqa: E402

from conftest import SHARED_DATA as SHARED, needs_fixtures

CT_RATE_REPORTS = SHARED / "ct-clip-reports" / "train.csv"
needs_reports = needs_fixtures(CT_RATE_REPORTS)

REPORT = ("Trachea and both main bronchi are open. The heart is enlarged (cardiomegaly). "
          "A 6 mm solid nodule is seen in the upper lobe of the right lung. No pleural effusion is seen. "
          "The liver is normal. Clinical correlation is recommended.")


def _demo_reports(n: int = 12, seed: int = 0) -> list[tuple[str, dict]]:
    """Whole reports of synthetic cases with their true region texts."""
    out = []
    for plan in demo.plan_dataset("ctrg", n, seed, 0.25, (48, 40, 16)):
        rep = demo.render_case(plan, seed).report
        out.append((rep.whole, rep.region_texts))
    return out


def _words(split) -> Counter:
    """Every word of a split's region texts and others."""
    return Counter(" ".join([t for t in split.region_texts if t] + split.others).split())


def _splitter(server, tmp_path=None, **kw) -> LLMSplitter:
    settings = dict(base_url=server.base_url if server else "http://127.0.0.1:9/v1", model="qwen-standin",
                    timeout_s=5.0, backoff_s=0.01, max_attempts=3, concurrency=2)
    settings.update(kw)
    return LLMSplitter(LLMSettings(**settings), cache=tmp_path, environ={})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ answers
def test_sentences_and_validation_are_strict_about_words_not_spacing():
    assert split_sentences("A 3.5 mm nodule.  Heart normal!\n\"Impression: no effusion\"") == [
        "A 3.5 mm nodule.", "Heart normal!", "Impression: no effusion"]
    report = "Heart is normal. Heart is normal. Lungs are clear."
    ok = {k: [] for k in ANSWER_SCHEMA["required"]}
    ok["heart"] = ["Heart is normal.", "Heart   is normal"]  # spacing and a dropped period do not matter
    ok["lung"] = ["Lungs are clear."]
    split = validate_answer(report, ok)
    assert split.region_texts[REGIONS.index("heart")] == "Heart is normal. Heart is normal."
    assert split.region_texts[REGIONS.index("abdomen")] is None
    bad = dict(ok, lung=["Lungs are clear and large."])
    with pytest.raises(AnswerError, match="invented sentence"):
        validate_answer(report, bad)
    with pytest.raises(AnswerError, match="placed twice"):
        validate_answer(report, dict(ok, heart=["Heart is normal."] * 3))
    with pytest.raises(AnswerError, match="missing"):
        validate_answer(report, dict(ok, heart=["Heart is normal."]))
    with pytest.raises(AnswerError, match="schema"):
        parse_answer(json.dumps({"heart": []}))
    with pytest.raises(AnswerError, match="invalid JSON"):
        parse_answer("{not json")


def test_prompt_is_versioned_and_carries_the_sentences():
    messages = build_messages(REPORT)
    assert sentences_from_messages(messages) == split_sentences(REPORT)
    assert all(r in messages[1]["content"] for r in REGIONS)
    assert cache_key(REPORT, PROMPT_VERSION, "a") != cache_key(REPORT, PROMPT_VERSION, "b")
    assert cache_key(REPORT, PROMPT_VERSION, "a") != cache_key(REPORT, "other-version", "a")
    assert cache_key(REPORT, PROMPT_VERSION, "a") != cache_key(REPORT + " ", PROMPT_VERSION, "a")


# ------------------------------------------------------------------------------------------------ the client
def test_good_server_request_is_structured_and_deterministic(tmp_path):
    reports = [r for r, _ in _demo_reports(4)]
    with StandinServer() as srv:
        recs = _splitter(srv, tmp_path).split_many(reports, progress=False)
    assert [r.status for r in recs] == ["ok"] * 4 and srv.requests == 4
    for report, rec in zip(reports, recs):
        assert rec.split == rules_split(report).to_json()
    body = srv.bodies[0]
    assert body["temperature"] == 0 and body["model"] == "qwen-standin" and body["seed"] == 0
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == ANSWER_SCHEMA


def test_guided_json_mode_sends_vllm_010s_field():
    with StandinServer() as srv:
        assert _splitter(srv, structured_output="guided_json").split_one(REPORT).status == "ok"
    assert "response_format" not in srv.bodies[0] and srv.bodies[0]["guided_json"] == ANSWER_SCHEMA


def test_structured_outputs_mode_is_refused_as_a_no_op_on_the_pinned_vllm():
    with pytest.raises(ConfigError, match=r"structured_outputs.*vLLM 0\.10\.2.*ignores.*response_format"):
        _splitter(None, structured_output="structured_outputs")


@pytest.mark.parametrize("mode", ["response_format", "guided_json"])
def test_schema_probe_passes_on_an_enforcing_server_before_the_reports(tmp_path, mode):
    reports = [r for r, _ in _demo_reports(3)]
    with StandinServer() as srv:
        recs = _splitter(srv, tmp_path, structured_output=mode).split_many(reports, progress=False)
    assert [r.status for r in recs] == ["ok"] * 3 and srv.requests == 3 and srv.probes == 1
    probe = srv.probe_bodies[0]
    assert probe["messages"] == PROBE_MESSAGES and ("response_format" in probe) == (mode == "response_format")


@pytest.mark.parametrize("mode,honours", [("response_format", ()), ("guided_json", ()),
                                          ("guided_json", ("response_format",))])  # the last: vLLM >= 0.12
def test_schema_probe_stops_the_run_on_a_server_that_ignores_the_constraint(tmp_path, mode, honours):
    """A server that does not enforce the schema answers the probe's plain word: the run stops before any report
    is asked, with a message naming the setting and the answer."""
    reports = [r for r, _ in _demo_reports(3)]
    with StandinServer(honours=honours) as srv:
        with pytest.raises(ConfigError, match=rf"does not enforce the answer schema with structured_output "
                                              rf"'{mode}'.*answered 'OK'"):
            _splitter(srv, tmp_path, structured_output=mode).split_many(reports, progress=False)
    assert srv.probes == 1 and srv.requests == 0
    assert not list(Path(tmp_path).rglob("*.json"))  # nothing cached


def test_no_probe_when_everything_is_cached_or_unconstrained(tmp_path):
    reports = [r for r, _ in _demo_reports(2)]
    with StandinServer() as srv:
        _splitter(srv, tmp_path).split_many(reports, progress=False)
        _splitter(srv, tmp_path).split_many(reports, progress=False)
        assert srv.probes == 1 and srv.requests == 2
    with StandinServer(honours=()) as srv:
        recs = _splitter(srv, structured_output="none").split_many(reports[:1], progress=False)
    assert recs[0].status == "ok" and srv.probes == 0 and "response_format" not in srv.bodies[0]


@pytest.mark.parametrize("behaviour,kind", [("malformed", "invalid JSON"), ("invented", "invented sentence"),
                                            ("duplicate", "sentence placed twice"),
                                            ("missing", "sentence missing"), ("truncated", "truncated")])
def test_bad_answer_is_retried_then_accepted(behaviour, kind):
    with StandinServer([behaviour]) as srv:
        rec = _splitter(srv).split_one(REPORT)
    assert rec.status == "ok" and rec.attempts == 2 and srv.requests == 2
    assert rec.errors[0]["kind"] == kind
    # the retry quoted the problem back to the model
    assert kind in srv.bodies[1]["messages"][-1]["content"]


@pytest.mark.parametrize("behaviour,kind,raw_has", [("malformed", "invalid JSON", "Sure!"),
                                                    ("invented", "invented sentence", "4 cm mass"),
                                                    ("duplicate", "sentence placed twice", "{")])
def test_answer_that_stays_bad_is_a_failure_record_not_an_empty_region(tmp_path, behaviour, kind, raw_has):
    table_in = pd.DataFrame({"case_id": ["c1", "c2"], "report": [REPORT, "Heart size is normal."]})
    with StandinServer(default=behaviour) as srv:
        sp = _splitter(srv, tmp_path / "cache")
        table, failures = split_report_table(table_in, "llm", splitter=sp, progress=False)
    assert srv.requests == 2 * 3  # three attempts each
    assert list(table.split_status) == ["failed", "failed"]
    assert all(t is None for t in table.region_texts[0])
    assert table.problems[0][0].startswith(f"split failed: {kind} after 3 attempt(s)")
    assert list(failures.case_id) == ["c1", "c2"] and raw_has in failures.raw[0]
    assert [e["kind"] for e in json.loads(failures.errors[0])] == [kind] * 3


def test_slow_server_times_out_and_the_retry_succeeds():
    with StandinServer(["slow"], slow_s=2.0) as srv:
        rec = _splitter(srv, timeout_s=0.4).split_one(REPORT)
    assert rec.status == "ok" and rec.attempts == 2 and rec.errors[0]["kind"] == "timeout"


def test_server_error_then_success_and_client_errors_are_not_retried():
    with StandinServer(["500", "500"]) as srv:
        rec = _splitter(srv).split_one(REPORT)
    assert rec.status == "ok" and rec.attempts == 3 and [e["kind"] for e in rec.errors] == ["HTTP 500"] * 2
    with StandinServer(["400"]) as srv:
        rec = _splitter(srv).split_one(REPORT)
    assert rec.status == "failed" and srv.requests == 1 and rec.reason.startswith("HTTP 400 after 1 attempt")


def test_server_down_gives_a_failure_record(tmp_path):
    srv = StandinServer()
    srv.stop()  # the port is closed: nobody answers
    rec = _splitter(srv, tmp_path).split_one(REPORT)
    assert rec.status == "failed" and rec.attempts == 3 and rec.errors[0]["kind"] == "connection"
    assert "cannot reach" in rec.reason


def test_cache_second_run_makes_no_request_and_failures_are_asked_again(tmp_path):
    reports = [r for r, _ in _demo_reports(5, seed=1)]
    with StandinServer() as srv:
        first = _splitter(srv, tmp_path).split_many(reports + reports[:2], progress=False)
        assert srv.requests == 5  # duplicates asked once
        second = _splitter(srv, tmp_path).split_many(reports, progress=False)
        assert srv.requests == 5  # zero HTTP calls on the rerun
    assert all(r.cached for r in second) and [r.split for r in second] == [r.split for r in first[:5]]
    assert len(list(tmp_path.rglob("*.json"))) == 5
    # another model is another cache entry
    with StandinServer() as srv:
        _splitter(srv, tmp_path, model="other-model").split_many(reports[:1], progress=False)
        assert srv.requests == 1
    # a failed report is cached as a failure and asked again on the next run (unless told not to)
    with StandinServer(default="malformed") as srv:
        assert _splitter(srv, tmp_path).split_many(["Heart is normal."], progress=False)[0].status == "failed"
        n = srv.requests
        assert _splitter(srv, tmp_path, ).split_many(["Heart is normal."], progress=False)[0].status == "failed"
        assert srv.requests == 2 * n
        sp = LLMSplitter(LLMSettings(base_url=srv.base_url, model="qwen-standin", backoff_s=0.01, max_attempts=3),
                         cache=tmp_path, retry_failed=False, environ={})
        assert sp.split_many(["Heart is normal."], progress=False)[0].status == "failed"
        assert srv.requests == 2 * n


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    reports = [r for r, _ in _demo_reports(6, seed=2)]
    seen = []

    def interrupt(i, rec):
        seen.append(i)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with StandinServer() as srv:
        with pytest.raises(KeyboardInterrupt):
            _splitter(srv, tmp_path, concurrency=1).split_many(reports, on_result=interrupt, progress=False)
        asked = srv.requests
        assert 2 <= asked < 6
        kept = len(list(tmp_path.rglob("*.json")))
        assert kept >= 2  # the two reported, and any that was in flight when the run stopped
        recs = _splitter(srv, tmp_path).split_many(reports, progress=False)
        assert all(r.status == "ok" for r in recs)
        assert sum(r.cached for r in recs) == kept
        assert srv.requests - asked == 6 - kept  # nothing finished is asked again


def test_concurrency_is_bounded():
    reports = [r for r, _ in _demo_reports(6, seed=3)]
    with StandinServer(default="slow", slow_s=0.3) as srv:
        recs = _splitter(srv, concurrency=2).split_many(reports, progress=False)
    assert all(r.status == "ok" for r in recs)
    assert srv.max_in_flight == 2


def test_settings_come_from_config_then_environment():
    env = {"REG2RG_LLM_BASE_URL": "http://gpu-node:9000/v1", "REG2RG_LLM_MODEL": "qwen14", "MY_KEY": "s3cret"}
    s = LLMSettings.from_config({"api_key_env": "MY_KEY"}).resolved(env)
    assert (s.base_url, s.model, s.api_key(env)) == ("http://gpu-node:9000/v1", "qwen14", "s3cret")
    s = LLMSettings.from_config({"base_url": "http://x/v1", "model": "m"}).resolved(env)
    assert (s.base_url, s.model) == ("http://x/v1", "m")
    from reg2rg.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown setting"):
        LLMSettings.from_config({"temprature": 0})


def test_managed_server_is_started_checked_and_stopped(tmp_path):
    from reg2rg.split.serve import ServerError, is_healthy, managed_server, server_root

    assert server_root("http://h:8000/v1") == "http://h:8000"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, str(Path(__file__).parent / "openai_standin.py"), "--port", str(port),
           "--startup-delay", "0.5"]
    with managed_server(cmd, url, log_path=tmp_path / "server.log", startup_timeout_s=30, poll_s=0.1) as proc:
        assert proc.poll() is None and is_healthy(url)
        rec = _splitter(None, base_url=url).split_one(REPORT)
        assert rec.status == "ok"
    assert proc.poll() is not None and not is_healthy(url)
    with pytest.raises(ServerError, match="exited with status 3"):
        with managed_server([sys.executable, "-c", "raise SystemExit(3)"], url, startup_timeout_s=10, poll_s=0.1):
            pass


# ------------------------------------------------------------------------------------------------ rules
def test_rules_splitter_on_demo_reports_recovers_the_region_texts():
    total = right = 0
    for report, truth in _demo_reports(40, seed=4):
        split = rules_split(report)
        assert _words(split) == Counter(" ".join(split_sentences(report)).split())  # every sentence placed once
        for i, region in enumerate(REGIONS):
            want = set(split_sentences(truth.get(region) or ""))
            got = set(split_sentences(split.region_texts[i] or ""))
            total += len(want)
            right += len(want & got)
    assert right / total >= 0.97, (right, total)


@needs_reports
def test_rules_splitter_on_real_ct_rate_sentences():
    df = pd.read_csv(CT_RATE_REPORTS, nrows=120)
    counts: Counter = Counter()
    for report in df.report_text:
        split = rules_split(report)
        assert _words(split) == Counter(" ".join(split_sentences(report)).split())
        counts.update({r: len(split_sentences(t)) for r, t in zip(REGIONS, split.region_texts) if t})
        counts["others"] += len(split.others)
    assert counts["others"] / sum(counts.values()) < 0.2
    assert all(counts[r] > 0 for r in REGIONS)
    expect = {
        "Trachea, both main bronchi are open.": "trachea and bronchie",
        "Pericardial effusion-thickening was not observed.": "heart",
        "Pleural effusion-thickening was not detected.": "pleura",
        "Thoracic esophageal calibration was normal and no significant tumoral wall thickening was detected.":
            "esophagus",
        "No enlarged lymph nodes were detected in prevascular, pre-paratracheal, subcarinal or bilateral "
        "hilar-axillary pathological dimensions.": "mediastinum",
        "Upper abdominal organs included in the sections are normal.": "abdomen",
        "Vertebral corpus heights are preserved.": "bone",
        "Bone structures in the study area are natural.": "bone",
        "Thoracic aorta diameter is normal.": "mediastinum",
        "Clinical correlation is recommended.": "others",
    }
    text = " ".join(df.report_text)
    for sentence, region in expect.items():
        if sentence in text:
            assert assign_sentence(sentence) == region, sentence
    assert assign_sentence("Aeration of both lung parenchyma is normal and no nodular or infiltrative lesion is "
                           "detected in the lung parenchyma.") == "lung"


def test_split_reports_command_writes_the_region_table(tmp_path):
    from reg2rg.cli import main
    from reg2rg.region_reports import read_region_reports

    reports = _demo_reports(3, seed=5)
    csv = tmp_path / "reports.csv"
    pd.DataFrame({"id": ["a", "b", "c", "d"], "report": [r for r, _ in reports] + [""]}).to_csv(csv, index=False)
    out = tmp_path / "regions.parquet"
    assert main(["split-reports", "--input", str(csv), "--output", str(out)]) == 0
    table = read_region_reports(out)
    assert list(table.case_id) == ["a", "b", "c", "d"]
    assert table.region_texts[0] == [rules_split(reports[0][0]).region_texts[i] for i in range(len(REGIONS))]
    assert table.problems[3] == ["no text"] and list(table.split_status) == ["ok", "ok", "ok", "empty"]
    with StandinServer(default="malformed") as srv:
        rc = main(["split-reports", "--input", str(csv), "--output", str(out), "--splitter", "llm",
                   "--base-url", srv.base_url, "--model", "m", "--max-attempts", "1", "--failures",
                   str(tmp_path / "failed.csv"), "--fail-on-error", "--cache", str(tmp_path / "cache")])
    assert rc == 1 and len(pd.read_csv(tmp_path / "failed.csv")) == 3
    assert np.all(read_region_reports(out).split_status[:3] == "failed")


def _real_reports(n: int = 60) -> pd.DataFrame:
    return pd.read_csv(CT_RATE_REPORTS, nrows=n)


def _no_region_report(df: pd.DataFrame) -> str:
    """A report of real CT-RATE sentences none of which belongs to a region (all go to `others`)."""
    seen = []
    for report in df.report_text:
        for s in split_sentences(report):
            if assign_sentence(s) == "others" and s not in seen:
                seen.append(s)
    assert len(seen) >= 2, seen
    return " ".join(seen[:2])


@pytest.mark.parametrize("kind", ["rules", "llm"])
@needs_reports
def test_report_without_region_sentence_is_marked_and_counted(kind, caplog):
    from reg2rg.split.table import PROBLEM_NO_REGION_TEXT

    df = _real_reports()
    no_region = _no_region_report(df)
    # Reports without quotes: the stand-in rejoins a request's sentences with spaces, which loses a quote's
    # sentence boundary (its answer then fails validation as an invented sentence).
    real = df[~df.report_text.str.contains('"')].head(2)
    table_in = pd.DataFrame({"case_id": [*real.AccessionNo, "none", "blank"],
                             "report": [*real.report_text, no_region, ""]})
    caplog.set_level("INFO", logger="reg2rg.split.table")
    if kind == "rules":
        table, failures = split_report_table(table_in, "rules")
    else:
        with StandinServer() as srv:
            table, failures = split_report_table(table_in, "llm", splitter=_splitter(srv), progress=False)
    assert list(table.split_status) == ["ok", "ok", "no_region_text", "empty"] and failures.empty
    row = table.iloc[2]
    assert all(t is None for t in row.region_texts) and row.others == split_sentences(no_region)
    assert list(row.problems) == [PROBLEM_NO_REGION_TEXT]
    assert list(table.problems[0]) == [] and any(table.region_texts[0])
    assert "2 ok, 1 no_region_text, 1 empty, 0 failed" in caplog.text


@needs_reports
def test_duplicate_report_ids_are_refused_naming_them(tmp_path, caplog):
    from reg2rg.cli import main
    from reg2rg.errors import InputError

    df = _real_reports(5)
    ids = ["train_1", "train_2", "train_1", "train_3", "train_2"]
    with pytest.raises(InputError, match=r"reports\.csv: case_id not unique: train_1, train_2 given more than once"):
        split_report_table(pd.DataFrame({"case_id": ids, "report": df.report_text}), source="reports.csv")
    csv = tmp_path / "reports.csv"
    pd.DataFrame({"AccessionNo": ids, "report_text": df.report_text}).to_csv(csv, index=False)
    out = tmp_path / "regions.parquet"
    assert main(["split-reports", "--input", str(csv), "--output", str(out)]) == 2
    assert f"{csv}: case_id not unique: train_1, train_2 given more than once" in caplog.text
    assert not out.exists()
