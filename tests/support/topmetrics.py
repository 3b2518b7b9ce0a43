"""Literal /metrics texts for the `top` tests: what a busy gate with two upstreams exposes.

`metrics_text(n)` is the n-th scrape of a gate whose counters grow by the
same amounts between any two scrapes, so a test knows the rates exactly.
"""

from __future__ import annotations

BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0",
           "60.0", "120.0", "300.0", "600.0", "+Inf")

# (key, route, code): requests per scrape interval, and the total at scrape 0
REQUESTS = {("laptop", "chat", "200"): (3, 1200), ("ci-runner", "openai_chat", "200"): (2, 310),
            ("ci-runner", "generate", "499"): (0, 4), ("alice", "chat", "200"): (1, 87),
            ("-", "chat", "401"): (1, 52), ("alice", "chat", "429"): (0, 9)}
REFUSALS = {"unauthorized": (1, 52), "rate": (0, 9), "busy": (0, 2)}
# (key, model, kind): tokens per scrape interval, and the total at scrape 0
TOKENS = {("laptop", "llama3.2", "prompt"): (120, 48000), ("laptop", "llama3.2", "completion"): (800, 512000),
          ("ci-runner", "qwen2.5-coder:32b", "prompt"): (400, 90000),
          ("ci-runner", "qwen2.5-coder:32b", "completion"): (200, 61000),
          ("alice", "other", "completion"): (0, 300)}
# Observations per interval into a latency histogram (cumulative counts per bucket)
TTFB_STEP = (0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6, 6, 6)
DURATION_STEP = (0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 4, 5, 6, 6, 6, 6, 6)


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in kv.items()) + "}"


def metrics_text(n: int = 0, *, streams_by_model: bool = False, upstream_b_up: bool = True) -> str:
    out = ["# HELP guardproxy_build_info guardproxy's version.", "# TYPE guardproxy_build_info gauge",
           'guardproxy_build_info{version="0.1.0"} 1.0',
           "# HELP guardproxy_requests_total Requests, when each ended.", "# TYPE guardproxy_requests_total counter"]
    out += [f"guardproxy_requests_total{_labels(key=k, route=r, code=c)} {base + n * step}.0"
            for (k, r, c), (step, base) in REQUESTS.items()]
    out += ["# TYPE guardproxy_refusals_total counter"]
    out += [f"guardproxy_refusals_total{_labels(reason=r)} {base + n * step}.0" for r, (step, base) in REFUSALS.items()]
    out += ["# TYPE guardproxy_tokens_total counter"]
    out += [f"guardproxy_tokens_total{_labels(key=k, model=m, kind=kind)} {base + n * step}.0"
            for (k, m, kind), (step, base) in TOKENS.items()]
    for name, step in (("guardproxy_time_to_first_byte_seconds", TTFB_STEP),
                       ("guardproxy_request_duration_seconds", DURATION_STEP)):
        out += [f"# TYPE {name} histogram"]
        out += [f"{name}_bucket{_labels(route='chat', le=le)} {100 + (n + 10) * s}.0" for le, s in zip(BUCKETS, step)]
        out += [f"{name}_sum{_labels(route='chat')} {40.5 + n * 21.0}", f"{name}_count{_labels(route='chat')} {100 + (n + 10) * 6}.0"]
    out += ["# TYPE guardproxy_streams_active gauge"]
    if streams_by_model:
        out += ['guardproxy_streams_active{key="laptop",model="llama3.2"} 2.0',
                'guardproxy_streams_active{key="ci-runner",model="qwen2.5-coder:32b"} 3.0',
                'guardproxy_streams_active{key="alice",model="llama3.2"} 0.0']
    else:
        out += ['guardproxy_streams_active{key="laptop"} 2.0', 'guardproxy_streams_active{key="ci-runner"} 3.0',
                'guardproxy_streams_active{key="alice"} 0.0']
    out += ["# TYPE guardproxy_queue_waiting gauge", "guardproxy_queue_waiting 4.0",
            "# TYPE guardproxy_connections_open gauge", "guardproxy_connections_open 17.0",
            "# TYPE guardproxy_upstream_up gauge",
            'guardproxy_upstream_up{upstream="http://gpu-a.lan:11434"} 1.0',
            f'guardproxy_upstream_up{{upstream="http://gpu-b.lan:11434"}} {1.0 if upstream_b_up else 0.0}',
            "# TYPE guardproxy_upstream_in_flight gauge",
            'guardproxy_upstream_in_flight{upstream="http://gpu-a.lan:11434"} 3.0',
            'guardproxy_upstream_in_flight{upstream="http://gpu-b.lan:11434"} 2.0']
    return "\n".join(out) + "\n"
