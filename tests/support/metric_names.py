"""The series guardproxy exposes at /metrics, named as `top` and the Grafana dashboard read them."""

from __future__ import annotations

HISTOGRAMS = {"guardproxy_request_duration_seconds", "guardproxy_time_to_first_byte_seconds"}
# Counters by their name with _total, histograms by their family's name.
SERIES = {"guardproxy_build_info", "guardproxy_requests_total", "guardproxy_refusals_total", "guardproxy_tokens_total",
          *HISTOGRAMS, "guardproxy_streams_active", "guardproxy_queue_waiting", "guardproxy_connections_open",
          "guardproxy_upstream_up", "guardproxy_upstream_in_flight", "guardproxy_shared_state_errors_total",
          "guardproxy_shared_state_fallbacks_total", "guardproxy_access_log_write_errors_total"}
