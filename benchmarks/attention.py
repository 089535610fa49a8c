"""Forward + backward of the attention product alone: the explicit ``softmax(q k^T) v`` against SDPA, by key count.

``vitlab.models.kernels.attention`` takes the explicit product for fp32 CPU sequences of at most
``EXPLICIT_ATTENTION_MAX_KEYS`` keys and SDPA above; this script times both paths on the same tensors (batch 64,
4 heads of 32, fp32, the two sides interleaved as in the other races) so that the threshold can be checked on a
machine. Ratios are explicit over SDPA (> 1: the explicit product is faster). ``--dtype bf16`` times bf16 tensors
(what autocast hands the product), the case of ``EXPLICIT_ATTENTION_MAX_KEYS_BF16`` on CPUs with native bf16.

    python benchmarks/attention.py --threads 2          # the threshold was chosen at 2 threads
    python benchmarks/attention.py --threads 1 --dtype bf16   # the bf16 threshold
    python benchmarks/attention.py --quick              # seconds: a smoke test

Writes ``benchmarks/results/attention.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import _common as C  # noqa: E402

KEYS = (17, 26, 50, 65, 101, 197, 257, 401)  # 28 px in 7x7 patches, 30 px in 6x6, 28 px in 4x4, ..., 224 px in 16x16, 224 in 14x14, 320 in 16x16
QUICK_KEYS = (17, 65)


def fwd_bwd(product: Callable[..., torch.Tensor], q, k, v, grad) -> Callable[[], None]:
    def call() -> None:
        torch.autograd.grad(product(q, k, v), (q, k, v), grad)

    return call


def explicit(q, k, v) -> torch.Tensor:
    from vitlab.models.kernels import attention_probs

    return torch.matmul(attention_probs(q, k), v)


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], "attention.json")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args(argv)
    C.apply_threads(args.threads)
    from vitlab.models import kernels

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    payload: dict[str, Any] = {"script": "attention", "quick": args.quick, "machine": C.machine_info(),
                               "dtype": args.dtype, "native_bf16": kernels.cpu_has_native_bf16(),
                               "explicit_attention_max_keys": kernels.EXPLICIT_ATTENTION_MAX_KEYS,
                               "explicit_attention_max_keys_bf16": kernels.EXPLICIT_ATTENTION_MAX_KEYS_BF16, "cases": []}
    batch = 2 if args.quick else args.batch
    for keys in QUICK_KEYS if args.quick else KEYS:
        torch.manual_seed(0)
        q, k, v = (torch.randn(batch, args.heads, keys, args.head_dim).to(dtype).requires_grad_() for _ in range(3))
        grad = torch.randn(batch, args.heads, keys, args.head_dim).to(dtype)
        calls = {"explicit": fwd_bwd(explicit, q, k, v, grad),
                 "sdpa": fwd_bwd(F.scaled_dot_product_attention, q, k, v, grad)}
        if args.quick:
            timings = C.interleaved(calls, items=batch, min_rounds=1, max_rounds=1, budget_s=0)
        else:
            timings = C.interleaved(calls, items=batch, warmup=3, min_rounds=10, max_rounds=200,
                                    budget_s=3.0 if args.budget is None else args.budget)
        case = {"keys": keys, "ms": {name: round(1e3 * batch / t.rate(), 3) for name, t in timings.items()},
                "explicit_over_sdpa": C.ratios(timings, "sdpa")["explicit"]}
        payload["cases"].append(case)
        C.log(f"{keys:4d} keys: explicit {case['ms']['explicit']:8.3f} ms, SDPA {case['ms']['sdpa']:8.3f} ms, "
              f"explicit/SDPA speed {case['explicit_over_sdpa']['median']:.2f}x "
              f"(paired {case['explicit_over_sdpa']['paired']:.2f}x)")
        C.write_json(args.out, payload)
    print(f"wrote {C.write_json(args.out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
