"""Print the README's results table ("Results") from a default report's JSON, so the README
quotes what the benchmark printed, not numbers copied by hand.

    .venv/bin/python bench/readme_table.py bench/results/<machine>-<date>.json

The rows are the README's: the micro-benchmark rows by their report ids, the small-call and
training-step sections, and the end-to-end epoch. A report run with --only lacks rows: KeyError.
"""
import json, sys
d = json.load(open(sys.argv[1]))
m = {r['id']: r for r in d['micro']}

def t(s):
    if s >= 1: return f"{s:.2f} s"
    if s >= 1e-3: return f"{s*1e3:.3g} ms" if s*1e3 < 100 else f"{s*1e3:.0f} ms"
    return f"{s*1e6:.3g} us" if s*1e6 < 100 else f"{s*1e6:.0f} us"

def med(r, k): return r['timings'][k]['median_s']
def iqr(r, k):
    v = r['timings'][k]['iqr_pct']
    return f" (±{v:.0f}%)" if v >= 15 else ""

def row(label, rid, shape=None, floor=True, note=None):
    r = m[rid]
    f, to = med(r, 'fastdrop'), med(r, 'torch')
    fl = r['timings'].get('floor', {}).get('median_s')
    last = note if note is not None else (f"{f/fl:.3g}x" if (floor and fl) else "")
    print(f"| {label} | {shape or r['shape']} | {t(f)}{iqr(r,'fastdrop')} | {t(to)}{iqr(r,'torch')} | {to/f:.3g}x | {last} |")

print("| op | shape | fastdrop | torch | speedup | fastdrop / floor |")
print("|---|---|---|---|---|---|")
row("dropout fwd, f32", "dropout_fwd|64x512|p=0.5|float32", note="(per-call overhead)")
for s in ("1024x1024", "8192x1024", "4096x4096"):
    row("dropout fwd, f32", f"dropout_fwd|{s}|p=0.5|float32")
row("dropout fwd, f64", "dropout_fwd|4096x4096|p=0.5|float64")
row("dropout fwd+bwd, f32", "dropout_fwd_bwd|4096x4096|p=0.5|float32")
row("dropout fwd, f32, output cache off", "dropout_fwd[output_cache=off]|4096x4096|p=0.5|float32")
row("dropout fwd+bwd, f32, output cache off", "dropout_fwd_bwd[output_cache=off]|4096x4096|p=0.5|float32")
row("dropout fwd, f32, one Numba thread", "dropout_fwd[numba_threads=1]|4096x4096|p=0.5|float32")
row("dropout fwd, f32, channels_last", "dropout_fwd[channels_last]|32x128x28x28|p=0.5|float32")
row("dropout fwd, f32, channels_last", "dropout_fwd[channels_last]|32x256x14x14|p=0.5|float32")
row("Dropout2d fwd+bwd, f32", "dropout2d_fwd_bwd|8x16x32x32|p=0.5|float32", note="")
row("Dropout2d fwd+bwd, f32", "dropout2d_fwd_bwd|32x64x56x56|p=0.5|float32")
row("Dropout2d fwd+bwd, f32, channels_last", "dropout2d_fwd_bwd[channels_last]|32x64x56x56|p=0.5|float32")
row("DropoutLinear fwd+bwd (vs Dropout+Linear)", "dropout_linear_fwd_bwd|8x512x512|p=0.5|float32", "8x512->512")
row("DropoutLinear fwd+bwd (vs Dropout+Linear)", "dropout_linear_fwd_bwd|256x1024x1024|p=0.5|float32", "256x1024->1024")
row("DropoutLinear fwd+bwd", "dropout_linear_fwd_bwd|8192x512x512|p=0.5|float32", "8192x512->512")
row("DropConnect, one mask (vs `F.linear(x, F.dropout(W))`)", "dropconnect_fwd_bwd|256x1024x1024|p=0.5|float32", "256x1024->1024")
row("DropConnect per sample (vs bernoulli_ + einsum)", "dropconnect_per_sample_fwd_bwd|64x512x512|p=0.5|float32", "64x512->512", note="")
row("drop_path fwd+bwd", "drop_path_fwd_bwd|256x197x384|p=0.1|float32")
row("drop_path fwd+bwd, output cache off", "drop_path_fwd_bwd[output_cache=off]|256x197x384|p=0.1|float32")
r = m["mc_predict|256x64x512x10x32|p=0.5|float32"]
row("mc_predict T=32 (vs 32 forwards)", "mc_predict|256x64x512x10x32|p=0.5|float32", "256 x 64-512-512-10",
    note=f"{med(r,'fastdrop')/r['timings']['floor']['median_s']:.3g}x one eval forward of all 32x256 rows")
row("max_norm_ (vs renorm_)", "max_norm_|4096x4096|p=0.0|float32", note="")
if "max_norm_dim0|4096x4096|p=0.0|float32" in m:  # (reports from session 46 on)
    row("max_norm_ dim=0 (vs renorm_ over columns)", "max_norm_dim0|4096x4096|p=0.0|float32", note="")
row("dropout_matmul fwd+bwd", "dropout_matmul_fwd_bwd|8x8x256x256x64|p=0.1|float32", "8x8x256x256 @ 256x64")
sc = d['small_calls']['timings']
def s(k): return sc[k]['median_s']
print(f"| nn.Dropout fwd, per call (`x * m`: {t(s('torch_mul|fwd'))}) | 64x512 | {t(s('fastdrop|fwd'))} (±{sc['fastdrop|fwd']['iqr_pct']:.0f}%) | {t(s('torch_dropout|fwd'))} | {s('torch_dropout|fwd')/s('fastdrop|fwd'):.3g}x | bare Function {t(s('bare_function|fwd'))} |")
print(f"| nn.Dropout fwd+bwd, per call (`x * m`: {t(s('torch_mul|fwd_bwd'))}) | 64x512 | {t(s('fastdrop|fwd_bwd'))} (±{sc['fastdrop|fwd_bwd']['iqr_pct']:.0f}%) | {t(s('torch_dropout|fwd_bwd'))} | {s('torch_dropout|fwd_bwd')/s('fastdrop|fwd_bwd'):.3g}x | bare Function {t(s('bare_function|fwd_bwd'))} |")
names = {"resnet": ("ResNet-like training step (drop_path)", "3x32x32"), "convnext": ("ConvNeXt-like training step (drop_path)", "3x64x64"),
         "cnn_dropout2d": ("CNN training step (Dropout2d)", "3x32x32")}
ts = {}
for r in d['train_step']:
    ts.setdefault(r['model'], {})[r['batch']] = r['timings']
for k, (label, inp) in names.items():
    a, b = ts[k][8], ts[k][32]
    g = lambda x, p: x[p]['median_s']
    print(f"| {label} | batch 8 / 32, {inp} | {t(g(a,'fastdrop'))} / {t(g(b,'fastdrop'))} | {t(g(a,'torch'))} / {t(g(b,'torch'))} | "
          f"{g(a,'torch')/g(a,'fastdrop'):.2f}x / {g(b,'torch')/g(b,'fastdrop'):.2f}x | drop layers (step - no-dropout "
          f"step): {t(g(a,'fastdrop')-g(a,'none'))} / {t(g(b,'fastdrop')-g(b,'none'))} vs torch's "
          f"{t(g(a,'torch')-g(a,'none'))} / {t(g(b,'torch')-g(b,'none'))} |")
e, acc = d['e2e']['providers'], d['e2e']['accuracy_test']
print(f"| digits MLP epoch (end to end) | 64-512-512-10 | {t(e['fastdrop']['epoch_median_s'])} | {t(e['torch']['epoch_median_s'])} | "
      f"{e['torch']['epoch_median_s']/e['fastdrop']['epoch_median_s']:.3g}x | test accuracy fastdrop - torch: "
      f"{100*acc['mean_diff']:+.2f} pp, 95% CI [{100*acc['ci95'][0]:+.2f}, {100*acc['ci95'][1]:+.2f}] (p = {acc['p_value']:.2f}) |")
