"""Side by side (a benchmark, not a test): `deploy quantize` against ONNX Runtime's `quantize_static` on the
same fp32 ONNX export, the same calibration photos and the same held-out photos.

For each model: calibration time, output SQNR (plain and mean-centred) and top-1 agreement with fp32 on
held-out photos, and ONNX Runtime CPU latency (batch 1 and 8) of fp32, ours and theirs, interleaved by
`deploy bench` so the ratios come from one run. ONNX Runtime is run twice: its default (QDQ, per-channel,
signed int8 activations, after `quant_pre_process`) and with unsigned activations (its fast x86 path).

    python scripts/ort_quantize_side_by_side.py --models resnet18 resnet50 mobilenet_v2 --out bench-results/ortq
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx


def _reader(array: np.ndarray, name: str, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: array[i:i + batch]} for i in range(0, len(array), batch)])

        def get_next(self):
            return next(self.items, None)

    return Reader()


def ort_quantize(fp32: Path, out: Path, calib: np.ndarray, activation: str, method: str, batch: int) -> float:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    start = time.perf_counter()
    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    name = onnx.load(str(pre)).graph.input[0].name
    quantize_static(str(pre), str(out), _reader(calib, name, batch), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method))
    pre.unlink(missing_ok=True)
    return time.perf_counter() - start


def score(fp32: Path, candidate: Path, held: np.ndarray, batch: int = 8) -> dict:
    from deploy.backends.ort_runner import cpu_session, optimized_op_counts, run_function
    from deploy.compare import Tolerance, diff_output

    def outputs(path: Path) -> np.ndarray:
        session = cpu_session(str(path))
        run = run_function(session)
        name = session.get_inputs()[0].name
        return np.concatenate([next(iter(run({name: held[i:i + batch]}).values()))
                               for i in range(0, len(held), batch)])

    d = diff_output("output", outputs(fp32), outputs(candidate), Tolerance())
    ops = optimized_op_counts(str(candidate))
    return {"sqnr_db": round(d.sqnr_db, 2), "centred_sqnr_db": round(d.centred_sqnr_db, 2),
            "top1_agreement": round(100 * d.top1, 1), "integer_convs": ops.get("QLinearConv", 0),
            "float_convs": ops.get("Conv", 0) + ops.get("FusedConv", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2"])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench-results/ort-quantize"))
    parser.add_argument("--no-bench", action="store_true", help="skip the latency runs")
    args = parser.parse_args()

    from deploy.calib import load_photos
    from deploy.export import export_onnx
    from deploy.quantize import QuantizeOptions, quantize_artifact
    from deploy.spec import load_artifact, load_onnx_artifact

    args.out.mkdir(parents=True, exist_ok=True)
    calib, held = load_photos(args.samples), load_photos(args.eval_samples, offset=args.samples)
    # both quantizers get the same preprocessed arrays, so neither is charged for decoding photos
    calib_file, held_file = args.out / "calib.npz", args.out / "held.npz"
    np.savez(calib_file, input=calib)
    np.savez(held_file, input=held)
    rows = []
    for name in args.models:
        fp32 = args.out / f"{name}.onnx"
        export_onnx(load_artifact(name), fp32, verify=False)
        ours = args.out / f"{name}.int8.onnx"
        start = time.perf_counter()
        report = quantize_artifact(load_onnx_artifact(fp32), ours, QuantizeOptions(
            method="auto", calib=str(calib_file), eval_data=str(held_file), samples=args.samples,
            eval_samples=args.eval_samples, counts_given=True, allow_poor=True))  # scored side by side here
        ours_seconds = time.perf_counter() - start
        row = {"model": name, "ours": {"method": report.chosen, "seconds": round(ours_seconds, 1),
                                       "calibrate_seconds": round(report.seconds["calibrate"], 1),
                                       **score(fp32, ours, held)}}
        for label, activation, method in (("ort_minmax_s8", "s8", "MinMax"), ("ort_minmax_u8", "u8", "MinMax"),
                                          ("ort_entropy_u8", "u8", "Entropy")):
            path = args.out / f"{name}.{label}.onnx"
            seconds = ort_quantize(fp32, path, calib, activation, method, batch=8)
            row[label] = {"seconds": round(seconds, 1), **score(fp32, path, held)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not args.no_bench:
            import subprocess

            files = [str(fp32), str(ours), str(args.out / f"{name}.ort_minmax_s8.onnx"),
                     str(args.out / f"{name}.ort_minmax_u8.onnx")]
            deploy_cli = str(Path(sys.executable).with_name("deploy"))
            subprocess.run([deploy_cli, "bench", *files, "--backend", "ort-cpu", "--batch", "1,8",
                            "--json", str(args.out / f"{name}.bench.json"),
                            "--md", str(args.out / f"{name}.bench.md")], check=True)
    (args.out / "side-by-side.json").write_text(json.dumps(rows, indent=2))
    lines = ["| model | quantizer | calib s | centred SQNR dB | top-1 agree % | int convs |",
             "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        for key in ("ours", "ort_minmax_s8", "ort_minmax_u8", "ort_entropy_u8"):
            r = row[key]
            label = f"deploy ({r['method']})" if key == "ours" else key
            lines.append(f"| {row['model']} | {label} | {r['seconds']} | {r['centred_sqnr_db']} | "
                         f"{r['top1_agreement']} | {r['integer_convs']}/{r['integer_convs'] + r['float_convs']} |")
    (args.out / "side-by-side.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
