"""Helpers shared by the tests: raw HTTP/1.1 on the wire, a recording upstream, polling with a deadline."""
