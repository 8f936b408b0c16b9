"""`deploy verify DIR/manifest.json`: check a pipeline's proof again, on this machine, for CI.

Three kinds of case, each pass/fail/skip (and a JUnit testcase with ``--junit``):

- ``sha256``: every artifact is the file the manifest certified (a replaced file fails here first);
- ``certificate``: each built candidate re-judged against the fp32 export on the same held-out samples; it
  fails when a figure falls below the recorded one by more than the recorded drift tolerance (one sample's
  decision, at least 0.5 points; 1 dB of centred SQNR), or when a candidate that was within the budget no
  longer is;
- ``latency``: per recorded backend available here, the fp32 export and the chosen artifact (``all``: every
  candidate) timed interleaved in one run; the ratio to fp32 is what is compared, so another machine still
  compares fairly. It fails when even the interval's lower end exceeds recorded × (1 + max_slowdown).
"""

from __future__ import annotations

import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts.files import sha256_file, write_text_atomic
from ..artifacts.inputs import adopt_stored_preprocess
from ..artifacts.spec import load_onnx_artifact
from ..calib.data import set_preprocess
from ..errors import BadInputError
from ..harness.heldout import Budget
from ..reporting import Report
from .certify import Certifier
from .manifest import read_manifest


@dataclass
class Case:
    kind: str  # sha256 | certificate | latency
    name: str
    status: str  # passed | failed | skipped
    message: str
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(repr=False)
class VerifyReport(Report):
    manifest: str
    cases: list[Case]
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Case]:
        return [c for c in self.cases if c.status == "failed"]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"manifest": self.manifest, "passed": self.passed, "cases": [c.to_dict() for c in self.cases],
                "failures": len(self.failures), "seconds": round(self.seconds, 2), "notes": self.notes}

    def summary(self) -> str:
        counts = {s: sum(c.status == s for c in self.cases) for s in ("passed", "failed", "skipped")}
        text = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        if self.passed:
            return f"PASSED verify {self.manifest}: {text}"
        first = self.failures[0]
        return f"FAILED verify {self.manifest}: {text}; first: {first.kind} {first.name}: {first.message}"


@dataclass
class VerifyOptions:
    max_slowdown: float = 0.15
    data: str | None = None  # the held-out data, when it is no longer where the manifest says
    latency: bool = True
    all_latency: bool = False
    min_time: float = 2.0
    threads: int | None = None


def _held_out_source(record: dict, folder: Path, override: str | None) -> str:
    if override:
        return override
    source = record["source"]
    if source == "photos":
        return source
    for candidate in (record.get("absolute"), source, str(folder / source)):
        if candidate and Path(candidate).exists():
            return candidate
    raise BadInputError(f"held-out data {source} not found (recorded at {record.get('absolute', source)}); "
                        f"give it with --data")


def verify_manifest(path: str | Path, options: VerifyOptions, say=None) -> VerifyReport:
    from ..calib.data import DataSourceError, load_samples
    from .run import check_backends, time_candidates

    tell = say or (lambda _msg: None)
    start = time.perf_counter()
    if options.max_slowdown < 0:
        raise BadInputError(f"--max-slowdown {options.max_slowdown:g}: give a fraction ≥ 0, e.g. 0.15 (15 %)")
    manifest = read_manifest(path)
    manifest_path = Path(path) / "manifest.json" if Path(path).is_dir() else Path(path)
    folder = manifest_path.parent
    cases: list[Case] = []
    notes: list[str] = []
    built = [c for c in manifest["candidates"] if c["built"]]
    intact: set[str] = set()
    for c in built:
        file = folder / c["file"]
        if not file.is_file():
            cases.append(Case("sha256", c["name"], "failed", f"{file} is missing"))
            continue
        now = sha256_file(file)
        extras = [e for e in c.get("extra_files", []) if not (folder / e["file"]).is_file()
                  or sha256_file(folder / e["file"]) != e["sha256"]]
        if now != c["sha256"]:
            cases.append(Case("sha256", c["name"], "failed", f"{c['file']} is not the certified file (sha256 "
                              f"{now[:12]}… vs {c['sha256'][:12]}… recorded)"))
        elif extras:
            cases.append(Case("sha256", c["name"], "failed", f"{extras[0]['file']} is missing or changed"))
        else:
            cases.append(Case("sha256", c["name"], "passed", f"{c['file']} sha256 {now[:12]}… as recorded"))
        intact.add(c["name"])
    reference = next((c for c in built if c["name"] == manifest["reference"]), None)
    if reference is None or not (folder / reference["file"]).is_file():
        raise BadInputError(f"{manifest_path}: its reference {manifest['reference']} file is missing; nothing can "
                            f"be certified against it")
    set_preprocess(None)  # the images are read as the pipeline read them: its files store how
    adopt_stored_preprocess(load_onnx_artifact(folder / reference["file"]),
                            lambda text: notes.append(text.removeprefix("note: ")))
    held_record = manifest["data"]["held_out"]
    source = _held_out_source(held_record, folder, options.data)
    if options.data is None and held_record.get("sha256") and Path(source).is_file():
        now = sha256_file(source)
        ok = now == held_record["sha256"]
        cases.append(Case("sha256", "held-out data", "passed" if ok else "failed",
                          f"{source} sha256 {now[:12]}… " + ("as recorded" if ok else
                          f"vs {held_record['sha256'][:12]}… recorded: not the data the certificates were made on "
                          f"(--data certifies on other data on purpose)")))
    model = manifest["model"]
    tell(f"loading {held_record['samples']} held-out samples from {source}")
    try:
        held = load_samples(source, model["shape"], n=held_record["samples"],
                            offset=held_record["offset"] if options.data is None else 0, input_name=model["input"])
    except DataSourceError as err:
        raise BadInputError(str(err)) from None
    if options.data is None and len(held.array) != held_record["samples"]:
        cases.append(Case("sha256", "held-out data", "failed", f"{source} gave {len(held.array)} held-out samples; "
                          f"the manifest certified on {held_record['samples']}"))
    tell("certifying against the fp32 export")
    certifier = Certifier(folder / reference["file"], held.array, held.labels, options.threads)  # None: ORT's
    budget = Budget(manifest["budget"]["max_drop"], manifest["budget"]["min_sqnr"])
    for c in built:
        if not (folder / c["file"]).is_file():
            continue
        t0 = time.perf_counter()
        cert = certifier.certify(folder / c["file"], (c.get("details") or {}).get("certified_on", "ort-cpu"))
        cases.append(_judge_certificate(c, cert, budget, time.perf_counter() - t0))
    if options.latency:
        cases.extend(_latency_cases(manifest, folder, options, check_backends, time_candidates, tell, notes))
    return VerifyReport(str(manifest_path), cases, time.perf_counter() - start, notes)


def _judge_certificate(c: dict, cert, budget: Budget, seconds: float) -> Case:
    recorded = c["certificate"] or {}
    tol = c.get("tolerance") or {"points": 0.5, "centred_sqnr_db": 1.0}
    problems = []
    figures = {"recorded": recorded, "now": cert.to_dict(), "tolerance": tol}
    for key in ("accuracy", "agreement"):
        was, now = recorded.get(key), getattr(cert, key)
        if was is not None and now is not None and now < was - tol["points"]:
            problems.append(f"{key} {now:.2f} % vs {was:.2f} % recorded (tolerance {tol['points']:.2f} points)")
    was, now = recorded.get("centred_sqnr_db"), cert.centred_sqnr_db
    if was is not None and math.isfinite(now) and now < was - tol["centred_sqnr_db"]:
        problems.append(f"centred SQNR {now:.1f} dB vs {was:.1f} dB recorded (tolerance "
                        f"{tol['centred_sqnr_db']:g} dB)")
    if was is None and recorded and math.isfinite(now) and now < 80.0:  # recorded exact (∞ dB)
        problems.append(f"was exact; now centred SQNR {now:.1f} dB")
    if c["within_budget"]:
        problems.extend(f"now over budget: {m}" for m in budget.misses(cert))
    name, value = cert.metric()
    text = f"{name} {value:.2f}" + (f", centred SQNR {cert.centred_sqnr_db:.1f} dB"
                                    if math.isfinite(cert.centred_sqnr_db) else ", exact")
    if problems:
        return Case("certificate", c["name"], "failed", "; ".join(problems), seconds, figures)
    return Case("certificate", c["name"], "passed", f"{text} (within the recorded tolerance)", seconds, figures)


def _latency_cases(manifest: dict, folder: Path, options: VerifyOptions, check_backends, time_candidates, tell,
                   notes: list[str]) -> list[Case]:
    from ..errors import MissingDependencyError

    cases = []
    files = {c["name"]: folder / c["file"] for c in manifest["candidates"] if c["built"]}
    # a candidate timed on another backend within its group (bf16: ov-cpu-bf16 within ov-cpu's)
    runtimes = {c["name"]: c["details"]["runtime"] for c in manifest["candidates"]
                if c["built"] and (c.get("details") or {}).get("runtime")}
    for backend, record in manifest["latency"].items():
        try:
            check_backends((backend,))
        except MissingDependencyError as err:
            cases.append(Case("latency", f"{backend}", "skipped", str(err)))
            continue
        chosen = manifest["choices"].get(backend, {}).get("chosen")
        names = [n for n in record["results"] if n != record["baseline"]] if options.all_latency else \
            ([chosen] if chosen and chosen != record["baseline"] else [])
        names = [n for n in names if n in files and files[n].is_file()]
        if not names:
            why = ("nothing was chosen (no candidate within the budget)" if not chosen else
                   "the chosen artifact is the fp32 export itself: no ratio to check")
            cases.append(Case("latency", f"{backend}", "skipped", why))
            continue
        tell(f"timing fp32 and {', '.join(names)} interleaved on {backend}")
        t0 = time.perf_counter()
        from ..environment import default_threads

        # the recorded threads (capped at this machine's cores), unless told otherwise
        threads = options.threads or min(record["threads"], default_threads())
        timings = time_candidates(backend, [(record["baseline"], files[record["baseline"]])]
                                  + [(n, files[n]) for n in names], record["batch"], options.min_time, threads, tell,
                                  shape=tuple(manifest["model"]["shape"]), runtimes=runtimes)
        seconds = time.perf_counter() - t0
        for n in names:
            was = record["results"][n]["ratio"]
            t = timings[n]
            limit = was * (1 + options.max_slowdown)
            figures = {"recorded_ratio": was, "ratio": t.ratio, "low": t.low, "high": t.high, "limit": limit,
                       "median_ms": t.median_ms}
            text = (f"ratio to fp32 {t.ratio:.3f} [{t.low:.3f}–{t.high:.3f}] vs {was:.3f} recorded; limit "
                    f"{limit:.3f} (+{options.max_slowdown:.0%})")
            status = "failed" if t.low > limit else "passed"
            cases.append(Case("latency", f"{backend}:{n}", status, text, seconds, figures))
    return cases


def write_junit(report: VerifyReport, path: str | Path) -> Path:
    """One <testsuite> with a <testcase> per case: classname verify.<kind>, a <failure> or <skipped> child."""
    suite = ET.Element("testsuite", name="deploy verify", tests=str(len(report.cases)),
                       failures=str(len(report.failures)),
                       skipped=str(sum(c.status == "skipped" for c in report.cases)),
                       time=f"{report.seconds:.3f}")
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="manifest", value=report.manifest)
    for c in report.cases:
        case = ET.SubElement(suite, "testcase", classname=f"verify.{c.kind}", name=c.name, time=f"{c.seconds:.3f}")
        if c.status == "failed":
            ET.SubElement(case, "failure", message=c.message, type=c.kind).text = c.message
        elif c.status == "skipped":
            ET.SubElement(case, "skipped", message=c.message)
        else:
            ET.SubElement(case, "system-out").text = c.message
    ET.indent(suite)
    root = ET.Element("testsuites")
    root.append(suite)
    return write_text_atomic(path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")
