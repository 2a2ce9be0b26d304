"""A slow cable for kernels without ``sch_netem``: copies Ethernet frames between two
interfaces, delaying (and dropping a share of) those that come in on the first.

Run by ``netns/conftest.py`` inside the switch namespace as
``python wire.py HOST_SIDE BRIDGE_SIDE --delay-ms D --loss P``. Frames arriving on
HOST_SIDE (sent by the host) leave on BRIDGE_SIDE ``D`` ms later, unless dropped with
probability ``P``; frames the other way pass at once, as netem on the host's egress
would do. Both interfaces must carry whole frames: the harness turns checksum and
segmentation offloads off on every host, since a copied frame loses the kernel's
"checksum still to do" mark and must fit the MTU.

Stops on SIGTERM/SIGKILL; prints ``ready`` once both sockets are bound.
"""

from __future__ import annotations

import argparse
import heapq
import random
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def _open(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((interface, 0))
    sock.setblocking(False)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host_side")
    parser.add_argument("bridge_side")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    host, bridge = _open(args.host_side), _open(args.bridge_side)
    delay = args.delay_ms / 1000
    due: list[tuple[float, int, bytes]] = []
    sequence = 0
    print("ready", flush=True)
    while True:
        timeout = max(due[0][0] - time.monotonic(), 0) if due else 1.0
        readable, _, _ = select.select([host, bridge], [], [], timeout)
        for sock in readable:
            while True:
                try:
                    frame, address = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if address[2] == PACKET_OUTGOING:
                    continue  # our own copy going out
                if sock is bridge:
                    _send(host, frame)
                elif rng.random() >= args.loss:
                    sequence += 1
                    heapq.heappush(due, (time.monotonic() + delay, sequence, frame))
        now = time.monotonic()
        while due and due[0][0] <= now:
            _send(bridge, heapq.heappop(due)[2])


def _send(sock: socket.socket, frame: bytes) -> None:
    try:
        sock.send(frame)
    except OSError as exc:  # a full queue or an oversized frame: a lost packet, as on a wire
        print(f"dropped a {len(frame)}-byte frame: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
