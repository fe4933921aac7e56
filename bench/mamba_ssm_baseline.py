"""Same-session baseline on the GPU machine: the authors' `mamba_ssm` (and transformers' GPT-NeoX)
on random weights in the published shapes, timed the way `benchmarks/benchmark_generation_mamba_simple.py`
times them (fp16, `generate(..., cg=True)`, 3 repeats after a warm-up), plus prefill forwards.

It needs `mamba_ssm`'s source tree on `sys.path` (`--mamba-src`, the folder that holds `mamba_ssm/`);
the CUDA extensions (`selective_scan_cuda`, `causal_conv1d`) are not built there, so:
  - decoding runs the Triton step kernels (`selective_state_update`) with CUDA graphs, as the reference
    does; the prompt's forward falls back to the pure-PyTorch scan for Mamba-1 (prompts are 8 tokens);
  - Mamba-2 prefill runs the Triton SSD kernels (`mamba_chunk_scan_combined`); Mamba-1 prefill would
    need `selective_scan_cuda` and is skipped.

Usage (on the GPU machine):
  python3 bench/mamba_ssm_baseline.py --mamba-src DIR --json OUT.json \
      [--models mamba-130m,mamba2-130m,mamba-2.8b,mamba2-2.7b] [--batches 1,16,64] \
      [--genlen 256] [--promptlen 8] [--prefill 2048,16384] [--pythia pythia-160m,pythia-1.4b]
"""

import argparse
import json
import sys
import time

import torch

SHAPES = {
    "mamba-130m": dict(d_model=768, n_layer=24, ssm_cfg={}),
    "mamba-370m": dict(d_model=1024, n_layer=48, ssm_cfg={}),
    "mamba-1.4b": dict(d_model=2048, n_layer=48, ssm_cfg={}),
    "mamba-2.8b": dict(d_model=2560, n_layer=64, ssm_cfg={}),
    "mamba2-130m": dict(d_model=768, n_layer=24, ssm_cfg={"layer": "Mamba2"}),
    "mamba2-1.3b": dict(d_model=2048, n_layer=48, ssm_cfg={"layer": "Mamba2"}),
    "mamba2-2.7b": dict(d_model=2560, n_layer=64, ssm_cfg={"layer": "Mamba2"}),
}
# EleutherAI/pythia-* configs (hidden, layers, heads, intermediate).
PYTHIA = {
    "pythia-160m": (768, 12, 12, 3072),
    "pythia-410m": (1024, 24, 16, 4096),
    "pythia-1.4b": (2048, 24, 16, 8192),
    "pythia-2.8b": (2560, 32, 32, 10240),
}


def timed(fn, repeats=3):
    fn()
    torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.time() - t0) / repeats


def mamba_model(name):
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    import mamba_ssm.modules.mamba_simple as ms
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

    if getattr(ms, "causal_conv1d_fn", None) is None:
        # The CUDA scan is not built: the (short) prompt's forward uses the reference scan.
        ms.selective_scan_fn = selective_scan_ref
    s = SHAPES[name]
    cfg = MambaConfig(d_model=s["d_model"], n_layer=s["n_layer"], vocab_size=50277,
                      ssm_cfg=dict(s["ssm_cfg"]), rms_norm=True, residual_in_fp32=True,
                      fused_add_norm=True, pad_vocab_size_multiple=8)
    torch.manual_seed(0)
    model = MambaLMHeadModel(cfg, device="cuda", dtype=torch.float16).eval()
    for layer in model.backbone.layers:
        # The fused conv + scan path calls causal_conv1d's CUDA code, which is not built: take the
        # path that runs the conv in PyTorch and the scan in Triton (mamba_chunk_scan_combined).
        if hasattr(layer.mixer, "use_mem_eff_path"):
            layer.mixer.use_mem_eff_path = False
    return model


def bench_mamba(name, args, out):
    model = mamba_model(name)
    for batch in args.batches:
        torch.manual_seed(0)
        ids = torch.randint(1, 1000, (batch, args.promptlen), dtype=torch.long, device="cuda")
        fn = lambda: model.generate(input_ids=ids, max_length=args.promptlen + args.genlen, cg=True,
                                    return_dict_in_generate=True, output_scores=False,
                                    enable_timing=False, top_k=1)
        try:
            t = timed(fn)
            rec = dict(model=name, kind="decode", batch=batch, genlen=args.genlen,
                       seconds=t, tok_s=batch * args.genlen / t)
        except Exception as e:  # noqa: BLE001 — record and go on
            rec = dict(model=name, kind="decode", batch=batch, error=repr(e)[:300])
        print(json.dumps(rec), flush=True)
        out.append(rec)
    if SHAPES[name]["ssm_cfg"].get("layer") == "Mamba2":
        for L in args.prefill:
            ids = torch.randint(1, 1000, (1, L), dtype=torch.long, device="cuda")
            try:
                with torch.inference_mode():
                    t = timed(lambda: model(ids, num_last_tokens=1))
                rec = dict(model=name, kind="prefill", tokens=L, seconds=t, tok_s=L / t)
            except Exception as e:  # noqa: BLE001
                rec = dict(model=name, kind="prefill", tokens=L, error=repr(e)[:300])
            print(json.dumps(rec), flush=True)
            out.append(rec)
    del model
    torch.cuda.empty_cache()


def bench_pythia(name, args, out):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    hidden, layers, heads, inter = PYTHIA[name]
    cfg = GPTNeoXConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=inter, vocab_size=50304, rotary_pct=0.25,
                        use_parallel_residual=True, max_position_embeddings=2048)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(cfg).to(device="cuda", dtype=torch.float16).eval()
    for batch in args.batches[:1]:
        ids = torch.randint(1, 1000, (batch, args.promptlen), dtype=torch.long, device="cuda")
        mask = torch.ones_like(ids)
        fn = lambda: model.generate(input_ids=ids, attention_mask=mask,
                                    max_length=args.promptlen + args.genlen,
                                    min_length=args.promptlen + args.genlen, do_sample=False,
                                    pad_token_id=0)
        t = timed(fn)
        rec = dict(model=name, kind="decode", impl="transformers-eager", batch=batch,
                   genlen=args.genlen, seconds=t, tok_s=batch * args.genlen / t)
        print(json.dumps(rec), flush=True)
        out.append(rec)
    del model
    torch.cuda.empty_cache()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mamba-src", required=True)
    p.add_argument("--models", default="mamba-130m,mamba2-130m,mamba-2.8b,mamba2-2.7b")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--genlen", type=int, default=256)
    p.add_argument("--promptlen", type=int, default=8)
    p.add_argument("--prefill", default="2048,16384")
    p.add_argument("--pythia", default="")
    p.add_argument("--json", default="")
    args = p.parse_args()
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.prefill = [int(b) for b in args.prefill.split(",") if b]
    sys.path.insert(0, args.mamba_src)
    print(json.dumps(dict(torch=torch.__version__, gpu=torch.cuda.get_device_name())), flush=True)
    out = []
    for name in [m for m in args.models.split(",") if m]:
        bench_mamba(name, args, out)
    for name in [m for m in args.pythia.split(",") if m]:
        bench_pythia(name, args, out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
