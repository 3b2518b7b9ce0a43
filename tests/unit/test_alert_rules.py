"""packaging/grafana/guardproxy-alerts.yml: valid for Prometheus's own checker, firing when it should.

`promtool` (Debian's `prometheus` package; `.ci/run` installs it) checks the file and runs unit tests of
each alert against made-up series. Without it, the file is still read and its metric names checked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.metric_names import SERIES

RULES = Path(__file__).resolve().parents[2] / "packaging" / "grafana" / "guardproxy-alerts.yml"
ALERTS = {"GuardproxyDown", "GuardproxyUpstreamDown", "GuardproxyRedisFallback", "GuardproxyHighRefusalRate",
          "GuardproxyQueueFull"}
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is not installed (Debian: apt-get install prometheus)")


def test_every_alert_reads_series_guardproxy_exports() -> None:
    text = RULES.read_text(encoding="utf-8")
    assert set(re.findall(r"- alert: (\w+)", text)) == ALERTS
    used = set(re.findall(r"\bguardproxy_[a-z_]+", text))
    assert used and used <= SERIES, used - SERIES


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "SUCCESS: 5 rules found" in done.stdout, done.stdout + done.stderr


UNIT_TESTS = """
rule_files: [RULES_PATH]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{job="guardproxy", instance="gate-a"}'
        values: '1 0 0 0 0'
      - series: 'guardproxy_upstream_up{instance="gate-a", upstream="gpu-2"}'
        values: '1 1 0 0 0'
      - series: 'guardproxy_shared_state_fallbacks_total{instance="gate-a"}'
        values: '0 0 5 10 20'
      - series: 'guardproxy_refusals_total{instance="gate-a", reason="unauthorized"}'
        values: '0+60x20'
      - series: 'guardproxy_refusals_total{instance="gate-a", reason="busy"}'
        values: '0+10x20'
      - series: 'guardproxy_requests_total{instance="gate-a", key="-", route="other", code="401"}'
        values: '0+100x20'
    alert_rule_test:
      - eval_time: 4m
        alertname: GuardproxyDown
        exp_alerts:
          - exp_labels: {severity: critical, job: guardproxy, instance: gate-a}
            exp_annotations:
              summary: "guardproxy gate-a does not answer scrapes"
              description: "Prometheus has not read /metrics from gate-a for 2 minutes: the gate is down or unreachable."
      - eval_time: 1m
        alertname: GuardproxyDown
        exp_alerts: []
      - eval_time: 4m
        alertname: GuardproxyUpstreamDown
        exp_alerts:
          - exp_labels: {severity: critical, instance: gate-a, upstream: gpu-2}
            exp_annotations:
              summary: "Ollama host gpu-2 is down behind gate-a"
              description: "guardproxy's health checks have failed for gpu-2 for a minute; requests go to the other hosts, or get 502/503 when there are none."
      - eval_time: 4m
        alertname: GuardproxyRedisFallback
        exp_alerts:
          - exp_labels: {severity: warning, instance: gate-a}
            exp_annotations:
              summary: "guardproxy gate-a decides limits without Redis"
              description: "20 requests in 5 minutes were decided by [cluster] on_redis_error: Redis is down, full or read-only, and limits are not shared between gates."
      - eval_time: 20m
        alertname: GuardproxyHighRefusalRate
        exp_alerts:
          - exp_labels: {severity: warning, instance: gate-a}
            exp_annotations:
              summary: "guardproxy gate-a refuses 70% of requests"
              description: "More than a quarter of requests were refused for 10 minutes (wrong keys, limits, budgets, bans): a client is misconfigured, or someone is probing. `guardproxy usage --by ip` and the refusals by reason say which."
      - eval_time: 20m
        alertname: GuardproxyQueueFull
        exp_alerts:
          - exp_labels: {severity: warning, instance: gate-a, reason: busy}
            exp_annotations:
              summary: "guardproxy gate-a turns generations away: queue full or no host free"
              description: "50 requests in 5 minutes got 503 because the queue was full ([limits] max_queue), a slot did not free up within queue_timeout, or no Ollama host was free. The GPUs are saturated: add capacity or lower the clients' concurrency."
"""


@needs_promtool
def test_each_alert_fires_on_the_series_it_watches(tmp_path: Path) -> None:
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(UNIT_TESTS.replace("RULES_PATH", f"\"{RULES}\""), encoding="utf-8")
    done = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
