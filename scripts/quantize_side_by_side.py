"""Side by side (a benchmark, not a test): `deploy quantize` against ONNX Runtime's `quantize_static` and NNCF's
`quantize` on the same fp32 ONNX file, the same calibration samples and the same held-out samples.

For each model and quantizer: seconds taken, mean-centred SQNR against fp32 on the held-out samples, top-1
agreement (classifiers) or the probability mass moved (softmax outputs), `deploy check`'s int8 preset
verdict on those samples, the integer convs ONNX Runtime CPU runs, and — unless --no-bench — latency on
ONNX Runtime CPU of every file, interleaved by `deploy bench` so the ratios come from one run.

ONNX Runtime runs three ways: its default (QDQ, per-channel, signed int8 activations, after
`quant_pre_process`), unsigned activations (its fast x86 path), and unsigned with entropy ranges. NNCF runs
with its defaults (ONNX in, Q/DQ ONNX out) when it is importable (`pip install nncf==3.4.0`; it is not a
dependency of deploy).

    python scripts/quantize_side_by_side.py --models resnet18 resnet50 mobilenet_v2 --out bench-results/side
    python scripts/quantize_side_by_side.py --models ~/.cache/deploy/ppocr/rapidocr-1.4.4/ch_PP-OCRv4_det_infer.onnx \\
        --data det.npz --shape 1,3,320,320 --out bench-results/side-det
"""

from __future__ import annotations

import argparse
import json
import subprocess
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
    try:
        quant_pre_process(str(fp32), str(pre))
    except Exception:  # its symbolic shape inference fails on some exporters' graphs (PaddleOCR's Concat)
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    name = onnx.load(str(pre)).graph.input[0].name
    quantize_static(str(pre), str(out), _reader(calib, name, batch), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method))
    pre.unlink(missing_ok=True)
    return time.perf_counter() - start


def nncf_quantize(fp32: Path, out: Path, calib: np.ndarray) -> float | str:
    """NNCF's post-training quantization with its defaults; a reason string when NNCF is not importable."""
    try:
        import nncf
    except ImportError:
        return "not installed (pip install nncf==3.4.0)"
    start = time.perf_counter()
    model = onnx.load(str(fp32))
    name = model.graph.input[0].name
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))], lambda x: {name: x})
    quantized = nncf.quantize(model, dataset, subset_size=len(calib))
    onnx.save(quantized, str(out))
    return time.perf_counter() - start


def score(fp32: Path, candidate: Path, held: np.ndarray, batch: int) -> dict:
    from deploy.backends.ort_graph import op_counts, optimized_graph, round_trips
    from deploy.harness.compare import PRESETS, diff_output
    from deploy.ort import cpu_session, run_function

    def outputs(path: Path) -> np.ndarray:
        session = cpu_session(str(path))
        run = run_function(session)
        name = session.get_inputs()[0].name
        return np.concatenate([next(iter(run({name: held[i:i + batch]}).values()))
                               for i in range(0, len(held) - len(held) % batch or len(held), batch)])

    d = diff_output("output", outputs(fp32), outputs(candidate), PRESETS["int8"])
    runs = optimized_graph(str(candidate))
    ops, trips = op_counts(runs), round_trips(runs)
    return {"centred_sqnr_db": round(d.centred_sqnr_db, 2), "cosine": round(d.cosine, 4),
            "top1_agreement": None if d.top1 is None else round(100 * d.top1, 1),
            "tv_p95": None if d.tv_p95 is None else round(d.tv_p95, 3),
            "preset": "PASSED" if d.passed else "FAILED: " + "; ".join(d.failures),
            "integer_convs": ops.get("QLinearConv", 0), "float_convs": ops.get("Conv", 0) + ops.get("FusedConv", 0),
            "dequantize": ops.get("DequantizeLinear", 0), "round_trips": trips.count}


def _samples(args, name: str, shape) -> tuple[np.ndarray, np.ndarray]:
    from deploy.calib.data import load_samples

    calib = load_samples(args.data, shape, n=args.samples, input_name=name)
    source = args.eval or args.data
    offset = 0 if args.eval else len(calib.array) + len(calib.skipped)
    held = load_samples(source, shape, n=args.eval_samples, offset=offset, input_name=name)
    return calib.array, held.array


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2"],
                        help="zoo names or fp32 .onnx files")
    parser.add_argument("--data", default="photos", help="calibration data: photos, a folder or an .npz")
    parser.add_argument("--eval", default=None, help="held-out data (default: --data after the calibration samples)")
    parser.add_argument("--shape", default=None, help="input shape for ONNX files with free dims, e.g. 1,3,320,320")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="samples per run when scoring")
    parser.add_argument("--out", type=Path, default=Path("bench-results/side-by-side"))
    parser.add_argument("--no-bench", action="store_true", help="skip the latency runs")
    parser.add_argument("--bench-batch", default="1", help="batch sizes to time, e.g. 1,8")
    args = parser.parse_args()

    from deploy.artifacts.spec import load_artifact, load_onnx_artifact
    from deploy.jobs.export import export_onnx
    from deploy.jobs.quantize import QuantizeOptions, quantize_artifact

    args.out.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else None
    deploy_cli = str(Path(sys.executable).with_name("deploy"))
    rows = []
    for spec in args.models:
        stem = Path(spec).stem if spec.endswith(".onnx") else spec
        fp32 = args.out / f"{stem}.onnx"
        if spec.endswith(".onnx"):
            model = onnx.load(str(Path(spec).expanduser()))
            opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
            if opset < 13:  # per-channel Q/DQ needs opset 13: every quantizer gets the same converted file
                model = onnx.version_converter.convert_version(model, 13)
            onnx.save(model, str(fp32))
        else:
            export_onnx(load_artifact(spec), fp32, verify=False)
        artifact = load_onnx_artifact(fp32, shape)
        name = artifact.inputs[0].name
        calib, held = _samples(args, name, artifact.input_shape)
        # every quantizer gets the same preprocessed arrays, so none is charged for decoding images
        calib_file, held_file = args.out / f"{stem}.calib.npz", args.out / f"{stem}.held.npz"
        np.savez(calib_file, **{name: calib})
        np.savez(held_file, **{name: held})
        row: dict = {"model": stem}
        ours = args.out / f"{stem}.deploy.onnx"
        start = time.perf_counter()
        report = quantize_artifact(artifact, ours, QuantizeOptions(
            method="auto", calib=str(calib_file), eval_data=str(held_file), samples=len(calib),
            eval_samples=len(held), counts_given=True, allow_poor=True))  # scored side by side here
        row["deploy"] = {"seconds": round(time.perf_counter() - start, 1), "kept_float": len(report.kept_float),
                         "steps": [s["step"] for s in report.steps], **score(fp32, ours, held, args.batch)}
        # ours again with every layer int8 (no tier 2, no mixed precision): the like-for-like file for speed
        plain = args.out / f"{stem}.deploy_int8.onnx"
        start = time.perf_counter()
        quantize_artifact(artifact, plain, QuantizeOptions(
            method="auto", calib=str(calib_file), eval_data=str(held_file), samples=len(calib),
            eval_samples=len(held), counts_given=True, allow_poor=True, tier2=False, aim_preset=False))
        row["deploy_int8"] = {"seconds": round(time.perf_counter() - start, 1), "kept_float": 0,
                              **score(fp32, plain, held, args.batch)}
        files = [str(fp32), str(ours), str(plain)]
        for label, activation, method in (("ort_minmax_s8", "s8", "MinMax"), ("ort_minmax_u8", "u8", "MinMax"),
                                          ("ort_entropy_u8", "u8", "Entropy")):
            path = args.out / f"{stem}.{label}.onnx"
            try:
                seconds = ort_quantize(fp32, path, calib, activation, method, batch=args.batch)
                row[label] = {"seconds": round(seconds, 1), **score(fp32, path, held, args.batch)}
            except Exception as err:  # a file ONNX Runtime's quantizer writes but cannot load: a result too
                row[label] = {"skipped": "failed: " + (str(err).strip().splitlines() or [type(err).__name__])[0][:160]}
                continue
            files.append(str(path))
        path = args.out / f"{stem}.nncf.onnx"
        seconds = nncf_quantize(fp32, path, calib)
        if isinstance(seconds, str):
            row["nncf"] = {"skipped": seconds}
        else:
            row["nncf"] = {"seconds": round(seconds, 1), **score(fp32, path, held, args.batch)}
            files.append(str(path))
        print(json.dumps(row), flush=True)
        if not args.no_bench:
            bench_json = args.out / f"{stem}.bench.json"
            subprocess.run([deploy_cli, "bench", *files, "--backend", "ort-cpu", "--batch", args.bench_batch,
                            *(["--shape", args.shape] if args.shape else []),
                            "--json", str(bench_json), "--md", str(args.out / f"{stem}.bench.md")], check=True)
            row["bench"] = _ratios(bench_json, files)
        rows.append(row)
    (args.out / "side-by-side.json").write_text(json.dumps(rows, indent=2))
    lines = ["| model | quantizer | s | centred SQNR dB | top-1 agree % / TV | int8 preset | int convs | round trips "
             "| ×fp32 |", "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for row in rows:
        for key in ("deploy", "deploy_int8", "ort_minmax_s8", "ort_minmax_u8", "ort_entropy_u8", "nncf"):
            r = row[key]
            if "skipped" in r:
                lines.append(f"| {row['model']} | {key} | – | – | – | {r['skipped']} | – | – | – |")
                continue
            decision = r["top1_agreement"] if r["top1_agreement"] is not None else \
                (f"TV {r['tv_p95']}" if r["tv_p95"] is not None else "–")
            speed = row.get("bench", {}).get(key, "–")
            lines.append(f"| {row['model']} | {key} | {r['seconds']} | {r['centred_sqnr_db']} | {decision} | "
                         f"{r['preset']} | {r['integer_convs']}/{r['integer_convs'] + r['float_convs']} | "
                         f"{r['round_trips']} | {speed} |")
    (args.out / "side-by-side.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _ratios(bench_json: Path, files: list[str]) -> dict:
    """Speed-up of each file over the fp32 file at each batch with its 95 % interval, from the bench's paired
    ratios (one run per batch, interleaved): fp32 time / file time, as 'b1 1.62× [1.55–1.70]; b8 …'."""
    data = json.loads(bench_json.read_text())
    out: dict[str, list[str]] = {}
    for result in data.get("results", []):
        ratio = result.get("ratio_to_baseline")
        if not ratio:
            continue
        text = f"{result.get('artifact')} {result.get('label')}"
        for path in files[1:]:
            if Path(path).name in text:
                key = Path(path).stem.split(".")[-1]
                out.setdefault(key, []).append(f"b{result.get('batch')} {1 / ratio['ratio']:.2f}× "
                                               f"[{1 / ratio['high']:.2f}–{1 / ratio['low']:.2f}]")
    return {key: "; ".join(texts) for key, texts in out.items()}


if __name__ == "__main__":
    main()
