"""``spinenode bench``'s report: the targets (issue 18) beside the figures they bound, and the table."""

from __future__ import annotations

from typing import Any

SENDERS = 4  # concurrent storescu senders in the throughput runs

# the targets (issue 18), beside the figures they bound
OVERHEAD_LIMIT_MS = 150  # end to end minus the forward passes the node ran, 2500-row DX
END_TO_END_FACTOR = 1.15  # end to end <= factor x forward + OVERHEAD_LIMIT_MS
THROUGHPUT_SHARE = 0.5  # of the model's batch-1 rate, 60000 / forward_ms images/min
RECEIVE_SHARE = 0.5  # of dcmtk storescp's receive speed
RSS_LIMIT_MB = 1500  # every shipped model loaded
COLD_START_LIMIT_S = 5.0  # process start to the first association
FRACTION_OF_SGEMM = 0.7  # the ResNet-50 stand-ins' forward rate


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The targets, computed from the figures (informative: nothing here fails a run). The end-to-end limit
    uses the forward time the node itself spent (both passes, image and mirror image)."""
    fwd, in_node = r["forward_ms_median"], r["forward_in_node_ms"]
    throughput = THROUGHPUT_SHARE * 60000 / fwd
    return {
        "overhead_ms_limit": OVERHEAD_LIMIT_MS,
        "overhead_met": r["overhead_ms"] <= OVERHEAD_LIMIT_MS,
        "end_to_end_ms_limit": round(END_TO_END_FACTOR * in_node + OVERHEAD_LIMIT_MS, 1),
        "end_to_end_met": r["end_to_end_ms"] <= END_TO_END_FACTOR * in_node + OVERHEAD_LIMIT_MS,
        "throughput_limit": round(throughput, 1),
        "throughput_met": max(r["throughput_images_per_min"], r.get("throughput_auto_images_per_min", 0)) >= throughput,
        "receive_ratio_met": r["receive_ratio_vs_storescp"] >= RECEIVE_SHARE,
        **(
            {"resnet50_fraction_met": all(m["fraction_of_sgemm"] >= FRACTION_OF_SGEMM for m in r["resnet50_stand_ins"])}
            if r.get("resnet50_stand_ins")
            else {}
        ),
        "peak_rss_met": r["peak_rss_mb"] <= RSS_LIMIT_MB,
        "cold_start_met": r["cold_start_s"] <= COLD_START_LIMIT_S,
    }


ROWS = [
    ("sgemm_gflops", "2-thread SGEMM", "GFLOP/s"),
    ("model_gflop", "model forward", "GFLOP"),
    ("forward_ms_median", "forward, production runtime (batch 1)", "ms"),
    ("forward_flip_batch_ms_median", "forward, image + mirror (batch 2)", "ms"),
    ("torch_forward_ms_median", "forward, torch eager (batch 1)", "ms"),
    ("fraction_of_sgemm", "forward rate / SGEMM rate", ""),
    ("decode_preprocess_ms", "decode + preprocess", "ms"),
    ("postprocess_ms", "postprocess (resize, argmax, figures)", "ms"),
    ("predict_ms", "predict (both passes, image + mirror)", "ms"),
    ("flip_agreement_cost_ms", "  of which the mirror image", "ms"),
    ("build_seg_ms", "SEG writer", "ms"),
    ("build_sr_ms", "SR writer", "ms"),
    ("build_sc_ms", "SC writer", "ms"),
    ("encode_ms", "encode SEG + SR + SC", "ms"),
    ("send_ms", "send SEG + SR + SC (one association)", "ms"),
    ("end_to_end_ms", "C-STORE -> last output accepted", "ms"),
    ("forward_in_node_ms", "of which the forward passes", "ms"),
    ("overhead_ms", "of which the node's own work", "ms"),
    ("throughput_images_per_min", f"throughput, {SENDERS} senders", "images/min"),
    ("throughput_cpu_share", "  share of both cores in use", ""),
    ("throughput_forward_share", "  share of the time in the model", ""),
    ("throughput_auto_images_per_min", f"throughput, {SENDERS} senders, --workers auto", "images/min"),
    ("throughput_auto_cpu_share", "  share of both cores in use", ""),
    ("receive_ratio_vs_storescp", "receive speed / storescp", ""),
    ("peak_rss_mb", "peak RSS, models loaded", "MB"),
    ("cold_start_s", "cold start -> first association", "s"),
]


def format_table(r: dict[str, Any]) -> str:
    head = f"{r['model']} on {r['runtime']} ({r['input_size'][0]}x{r['input_size'][1]}), "
    head += f"{r['input']}, image {r['image_size'][0]}x{r['image_size'][1]}; "
    head += f"load average {r['machine']['loadavg_start']}"
    lines = [head]
    for key, label, unit in ROWS:
        lines.append(f"  {label:40s} {r[key]:>10} {unit}")
    for m in r.get("resnet50_stand_ins", []):
        label = f"{m['architecture']} {m['encoder']} {m['input_size'][0]}x{m['input_size'][1]} (random)"
        lines.append(f"  {label:40s} {m['forward_ms_median']:>10} ms, {m['fraction_of_sgemm']} of SGEMM")
    met = ", ".join(f"{k[:-4]} {'met' if v else 'NOT met'}" for k, v in r["targets"].items() if k.endswith("_met"))
    lines.append(f"  targets: {met}")
    return "\n".join(lines)


__all__ = ["ROWS", "SENDERS", "format_table", "targets"]
