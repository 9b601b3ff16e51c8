#!/usr/bin/env python3
"""Verifies webhook deliveries with the Standard Webhooks reference library (PyPI
`standardwebhooks`), which authbridge did not write: the end-to-end tests hand it what their
receiver got. Reads JSON from stdin: [{"secret", "headers", "body"}]; prints how many verified,
and exits non-zero at the first that does not (or when the library is missing)."""
import json
import sys

from standardwebhooks.webhooks import Webhook

items = json.load(sys.stdin)
for i, item in enumerate(items):
    try:
        Webhook(item["secret"]).verify(item["body"], item["headers"])
    except Exception as e:  # the library raises WebhookVerificationError
        print(f"delivery {i} ({item['headers'].get('webhook-id')}) does not verify: {e}", file=sys.stderr)
        sys.exit(1)
print(f"{len(items)} verified")
