"""One party of a SecretFlow PSI run, for ``xmatch bench --baseline secretflow``.

Runs in the peers virtualenv (``make bench-peers``: PyPI ``spu`` 0.9.5, which
pins numpy<2 and jax), never in the project's own environment, so it imports
nothing but the standard library and ``spu``. Two of these processes, ranks 0
(receiver, the roster side) and 1 (the set side), talk over brpc on loopback.
Each writes one JSON object to ``--result``: its rank, the seconds
``spu.psi.psi_execute`` took (reading its CSV, the protocol, writing the
receiver's output CSV) and the intersection count (spu logs to stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

PROTOCOLS = ("ECDH", "RR22", "KKRT")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, choices=(0, 1), required=True)
    parser.add_argument("--ports", type=int, nargs=2, required=True, metavar="PORT")
    parser.add_argument("--protocol", choices=PROTOCOLS, required=True)
    parser.add_argument("--input", required=True, help="CSV with an 'id' column")
    parser.add_argument("--output", required=True, help="receiver's result CSV")
    parser.add_argument("--result", required=True, help="JSON file for the timing")
    args = parser.parse_args(argv)

    import spu.libspu.link as link
    import spu.psi as psi

    desc = link.Desc()
    desc.id = "xmatch-bench"
    desc.recv_timeout_ms = 3_600_000
    desc.http_timeout_ms = 3_600_000
    for party, port in zip(("roster", "set"), args.ports, strict=True):
        desc.add_party(party, f"127.0.0.1:{port}")
    lctx = link.create_brpc(desc, args.rank)
    protocol = {
        "ECDH": psi.PsiProtocol.PROTOCOL_ECDH,
        "RR22": psi.PsiProtocol.PROTOCOL_RR22,
        "KKRT": psi.PsiProtocol.PROTOCOL_KKRT,
    }[args.protocol]
    config = psi.PsiExecuteConfig(
        protocol_conf=psi.PsiProtocolConfig(
            protocol=protocol,
            receiver_rank=0,
            broadcast_result=False,
            ecdh_params=psi.EcdhParams(curve=psi.EllipticCurveType.CURVE_25519),
        ),
        input_params=psi.InputParams(path=args.input, selected_keys=["id"], keys_unique=True),
        output_params=psi.OutputParams(path=args.output, disable_alignment=True),
    )
    lctx.barrier()  # both links up before the clock starts
    t0 = time.perf_counter()
    report = psi.psi_execute(config, lctx)
    seconds = time.perf_counter() - t0
    lctx.stop_link()
    line = {"rank": args.rank, "seconds": seconds, "intersection": report.intersection_count}
    with open(args.result, "w", encoding="utf-8") as f:
        json.dump(line, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
