"""Report splitting: whole chest CT reports -> one text per region (REGIONS) plus `others`.

- `sentences`: the sentence segmentation every part shares.
- `answer`: the answer format (JSON schema) and its validation against the source report.
- `prompt`: the versioned LLM prompt.
- `llm`: the OpenAI-compatible client (vLLM / Qwen2.5-14B-Instruct by default) with structured output,
  bounded concurrency, timeouts, retries with backoff, validation and a content-addressed store of answers
  (`answer_store`).
- `rules`: the offline keyword splitter.
- `serve`: start and stop `vllm serve` around a run.
- `table`: a table of reports -> the region report table of `reg2rg.region_reports`; the `split-reports` command.
"""
