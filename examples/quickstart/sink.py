#!/usr/bin/env python3
"""A tiny HTTP sink for the quickstart: prints every JSON body POSTed to it.

Run with: python3 examples/quickstart/sink.py [PORT]   (default 9000)
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            doc = json.loads(body)
            event = doc.get("event", {})
            print(f"{self.path} route={doc.get('route')} event={event.get('id')} "
                  f"type={event.get('type')} config={json.dumps(doc.get('config'))}", flush=True)
        except ValueError:
            print(f"{self.path} (not JSON) {body[:200]!r}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(f"sink listening on http://127.0.0.1:{port}", flush=True)
    HTTPServer(("127.0.0.1", port), Sink).serve_forever()
