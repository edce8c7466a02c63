"""txfast itself, as ``txfast run --source kafka`` runs it, with progress lines for compare.py.

The command line builds settings and calls ``KafkaScorer(settings).run(...)`` with signal
handlers installed; this does the same (settings from ``--settings`` JSON overrides, as
``load_settings`` takes them) and adds the ``on_batch`` hook to report progress in the
peers' format (``common.Status``): decode, features per partition, ONNX scoring, rules,
DuckDB store (history ``all``) and exactly-once alerts in Kafka transactions, unchanged.
"""

from __future__ import annotations

import argparse
import json
import time

from common import Status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--settings", required=True, help="JSON overrides for load_settings")
    ap.add_argument("--expect", type=int, default=0)
    args = ap.parse_args()

    from txfast.config import load_settings
    from txfast.streaming import KafkaScorer

    with open(args.settings) as f:
        settings = load_settings(env={}, overrides=json.load(f))
    status = Status()
    reported = [0, 0]

    def on_batch(scorer: KafkaScorer) -> None:
        s = scorer.stats
        status.add(s.consumed - reported[0], s.alerts - reported[1])
        reported[:] = [s.consumed, s.alerts]

    scorer = KafkaScorer(settings, on_batch=on_batch)
    scorer.install_signal_handlers()
    start = time.time()
    stats = scorer.run(max_messages=args.expect or None)
    d = stats.as_dict()
    status.processed, status.alerts = stats.consumed, stats.alerts
    if stats.first_message_s is not None:
        status.first_input_wall = start + stats.first_message_s
    status.final(stats=d)


if __name__ == "__main__":
    main()
