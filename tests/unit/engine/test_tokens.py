"""Token counts from the tail of a stream: NDJSON and SSE, split across reads."""

from __future__ import annotations

from guardproxy.engine.tokens import TAIL_BYTES, usage_from_tail


NDJSON_TAIL = (b'2f\r\n{"model":"llama3.2","response":" tok4","done":false}\n\r\n'
               b'c1\r\n{"model":"llama3.2","created_at":"x","response":"","done":true,"done_reason":"stop",'
               b'"total_duration":1234,"load_duration":1,"prompt_eval_count":26,"prompt_eval_duration":1,'
               b'"eval_count":290,"eval_duration":1}\n\r\n0\r\n\r\n')


def test_usage_from_ndjson_final_line_split_across_reads() -> None:
    parts = [NDJSON_TAIL[:70], NDJSON_TAIL[70:150], NDJSON_TAIL[150:]]
    tail = b"".join(parts)[-TAIL_BYTES:]  # as the relay hands it over
    assert usage_from_tail(tail) == {"model": "llama3.2", "prompt_tokens": 26, "completion_tokens": 290}


def test_usage_from_sse() -> None:
    tail = (b'data: {"id":"c","model":"qwen3:8b","choices":[],"usage":{"prompt_tokens":26,"completion_tokens":5,'
            b'"total_tokens":31}}\n\ndata: [DONE]\n\n')
    assert usage_from_tail(tail) == {"model": "qwen3:8b", "prompt_tokens": 26, "completion_tokens": 5}
    assert usage_from_tail(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n') == {}


def test_usage_when_context_array_separates_done_from_counts() -> None:
    line = (b'{"model":"llama3.2","response":"","done":true,"context":[' + b",".join(b"%d" % i for i in range(5000)) +
            b'],"total_duration":1,"prompt_eval_count":26,"eval_count":290,"eval_duration":1}\n')
    tail = b"".join([line[:20000], line[20000:]])[-TAIL_BYTES:]
    assert usage_from_tail(tail) == {"prompt_tokens": 26, "completion_tokens": 290}
