"""Parses a /metrics exposition read from stdin with the official Python client's parsers and
prints {family name: type} as JSON.

Usage: python parse_metrics.py text|openmetrics < metrics.txt

`text` is the classic Prometheus text format (prometheus_client.parser); `openmetrics` is the
strict OpenMetrics parser, for which a malformed line, a sample outside its family, a counter
without _total, a histogram without +Inf or a missing '# EOF' is an error. Any parse error
exits non-zero with Python's message.
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as prometheus_text

parse = {"text": prometheus_text, "openmetrics": openmetrics}[sys.argv[1]]
families = {}
for family in parse(sys.stdin.read()):
    if family.name in families:
        raise SystemExit(f"family {family.name} appears twice")
    families[family.name] = family.type
    for sample in family.samples:
        if sample.value != sample.value:  # NaN
            raise SystemExit(f"NaN sample {sample}")
print(json.dumps(families, sort_keys=True))
