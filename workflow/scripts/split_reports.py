"""Adapter: rule split_reports_shard -> reg2rg.split (one shard's whole CTRG reports -> its region report table).
With splitter.llm.serve.enabled, `vllm serve` runs for the length of the split (GPU job)."""
import os
from pathlib import Path

from reg2rg.logs import setup_script_logging

setup_script_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from reg2rg.layouts.ctrg import ctrg_reports  # noqa: E402
from reg2rg.region_reports import write_region_reports  # noqa: E402
from reg2rg.shards import select_cases  # noqa: E402
from reg2rg.split.table import split_report_table  # noqa: E402

inv = select_cases(pd.read_parquet(snakemake.input.inventory), snakemake.params.cases)
splitter = snakemake.params.splitter or {}
kind = splitter.get("kind", "rules")
llm = dict(splitter.get("llm") or {})
serve = llm.pop("serve", None) or {}


def run():
    return split_report_table(ctrg_reports(inv, snakemake.params.root), kind, llm=llm, cache_dir=snakemake.params.cache,
                              source=snakemake.input.inventory)


if kind == "llm" and serve.get("enabled"):
    from reg2rg.split.serve import free_port, managed_server, vllm_command

    # port null (the default): a free port of this node, so that two serving jobs on one node do not collide
    port = int(serve.get("port") or free_port())
    llm["base_url"] = f"http://127.0.0.1:{port}/v1"
    llm["model"] = llm.get("model") or Path(str(serve.get("model_path"))).name
    command = vllm_command(serve.get("model_path"), port, served_model_name=llm["model"],
                           gpu_memory_utilization=serve.get("gpu_memory_utilization"),
                           max_model_len=serve.get("max_model_len"),
                           tensor_parallel_size=serve.get("tensor_parallel_size"),
                           extra_args=serve.get("extra_args") or ())
    key = os.environ.get(llm.get("api_key_env", "REG2RG_LLM_API_KEY"))
    env = {"VLLM_API_KEY": key} if key else {}  # vLLM reads its key from there, never from the command line
    with managed_server(command, llm["base_url"], log_path=snakemake.log.server,
                        startup_timeout_s=float(serve.get("startup_timeout_s", 1800)), env=env):
        table, failures = run()
else:
    table, failures = run()

write_region_reports(table, snakemake.output.reports)
failures.to_parquet(snakemake.output.failures, index=False)
