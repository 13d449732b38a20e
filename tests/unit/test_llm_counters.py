"""The bench's reading of vLLM's prompt-token counters (service.loadtest.llm_counters)."""

from service.loadtest.llm_counters import PromptTokenCounters, parse_counters

METRICS = """\
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="recranker"} 3036.0
vllm:prompt_tokens_total{engine="0",model_name="other"} 4.0
vllm:prefix_cache_queries_total{engine="0",model_name="recranker"} 3040.0
vllm:prefix_cache_hits_total{engine="0",model_name="recranker"} 2016.0
vllm:prompt_tokens_created{engine="0",model_name="recranker"} 1.7e9
vllm:request_prompt_tokens_sum{engine="0",model_name="recranker"} 99999.0
"""


def test_counters_are_summed_over_label_sets_and_other_series_are_ignored():
    c = parse_counters(METRICS)
    assert c == PromptTokenCounters(prompt=3040.0, queries=3040.0, hits=2016.0)
    assert c.computed == 1024.0


def test_a_counter_the_server_does_not_export_gives_no_reading_rather_than_zero():
    assert parse_counters("vllm:prompt_tokens_total 10\n") is None


def test_a_scenario_reads_the_difference_per_user():
    before = PromptTokenCounters(100.0, 100.0, 40.0)
    after = PromptTokenCounters(2100.0, 2100.0, 1040.0)
    assert (after - before).per(4) == {"prompt_tokens_per_user": 500.0, "computed_prompt_tokens_per_user": 250.0}
