"""CPU per streamed event of the client's receive path alone: framing, SSE split, JSON, timing.

Feeds a recorded chunked SSE response (the simulated engine's chat stream, one event a chunk) into
the transport's connection object, read by read, with no socket and no event-loop wake-ups: what is
left is the work ``data_received`` does per event, the part of ``client_fidelity.py``'s figure that a
change of parser moves. Low-noise enough to compare two trees run one after the other:

    PYTHONPATH=<tree> python benchmarks/client_parse.py [--events 200000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from pytest_llmperf.loadgen import http1
from pytest_llmperf.loadgen.client import _SSEStream
from pytest_llmperf.metrics import RequestRecord

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: keep-alive\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
EVENT = (
    b'data: {"id":"chatcmpl-0123456789abcdef01234567","object":"chat.completion.chunk","created":1764547200,'
    b'"model":"llmperf-sim","choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,'
    b'"finish_reason":null}]}\n\n'
)


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def one_round(events: int, per_response: int) -> float:
    """Seconds of CPU per event over ``events`` events, ``per_response`` events per response."""
    loop = asyncio.new_event_loop()
    chunk = b"%x\r\n%b\r\n" % (len(EVENT), EVENT)
    body = [chunk] * per_response + [b"0\r\n\r\n"]
    conn = http1._Connection(loop)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    responses = events // per_response
    start = time.process_time()
    for _ in range(responses):
        record = RequestRecord(prompt_len=1)
        sink = _SSEStream(record, chat=True)
        conn.send(b"", sink, deadline=float("inf"))
        conn.data_received(HEAD)
        for piece in body:
            conn.data_received(piece)
        assert len(record.itl) == per_response - 1
    elapsed = time.process_time() - start
    loop.close()
    return elapsed / (responses * per_response)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--per-response", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rounds = [one_round(args.events, args.per_response) * 1e6 for _ in range(args.repeats)]
    print(
        f"client receive path: {statistics.median(rounds):.2f} us per event "
        f"(median of {args.repeats}; {min(rounds):.2f}..{max(rounds):.2f})"
    )


if __name__ == "__main__":
    main()
