"""``make bench``: run the performance.md scenarios and write bench/RESULTS.md.

    python -m bench.run                      # everything, full length (~16 minutes)
    python -m bench.run --quick              # shorter runs and soak (~5 minutes)
    python -m bench.run --scenarios S1,S3    # a subset
    python -m bench.run --scenarios S1T      # tracing's cost on S1 (not in the default set)
    python -m bench.run --smoke --output-dir /tmp/x   # the test suite's end-to-end check

Exit status: 0 every scenario met its target; 1 some target was missed; 2 something
could not be measured (a scenario failed to run, wrk is missing, bad arguments).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from bench import wrk
from bench.harness import (
    PROFILES,
    REPO_ROOT,
    Bench,
    Profile,
    background_load,
    check_event_loop_stack,
)
from bench.procs import HarnessError, Supervisor, Terminated, sigterm_raises
from bench.report import build_document, environment, write_reports
from bench.scenarios import DEFAULT_SCENARIOS, SCENARIOS, Row, ScenarioResult

EXIT_PASSED = 0
EXIT_TARGET_MISSED = 1
EXIT_ERROR = 2
DEFAULT_OUTPUT = REPO_ROOT / "bench"
DEFAULT_WORK = REPO_ROOT / "bench" / ".work"


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark the broker against the framework floor and a naive broker "
        "(performance.md) and write RESULTS.md and results.json.",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--quick", action="store_true", help="3 s runs, 30 s soak (about 5 minutes in all)"
    )
    length.add_argument(
        "--smoke",
        action="store_true",
        help="1 s runs, 1 pair, small S2/S5 sizes: checks the machinery, not the speed",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated subset, e.g. S1,S3 (default: {','.join(DEFAULT_SCENARIOS)}; "
        f"also {','.join(name for name in SCENARIOS if name not in DEFAULT_SCENARIOS)})",
    )
    parser.add_argument("--duration", type=float, help="seconds per timed run (whole seconds)")
    parser.add_argument("--pairs", type=int, help="A/B pairs per comparison (default 5; quick 3)")
    parser.add_argument("--soak", type=float, help="S5 soak seconds (default 300)")
    parser.add_argument("--fill", type=int, help="S5 distinct tokens to cache (default 100000)")
    parser.add_argument("--threads", type=int, help="wrk threads (default 1)")
    parser.add_argument(
        "--broker-log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the broker's BROKER_LOG_LEVEL (default info: audit events on, as in production)",
    )
    parser.add_argument(
        "--baseline-ref",
        help="S1T: the git ref whose broker is 'before tracing' (default: the parent of the "
        "commit that added app/observability/tracing.py)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="where RESULTS.md and results.json go (default bench/)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK,
        help="keys, policies, token files, server logs (default bench/.work/)",
    )
    return parser.parse_args(argv)


def choose_profile(args: argparse.Namespace) -> Profile:
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.duration is not None:
        profile = dataclasses.replace(profile, duration_s=max(1, round(args.duration)))
    if args.pairs is not None:
        profile = dataclasses.replace(profile, pairs=max(1, args.pairs))
    if args.soak is not None:
        profile = dataclasses.replace(profile, s5_soak_s=max(1, round(args.soak)))
    if args.fill is not None:
        profile = dataclasses.replace(profile, s5_fill=max(1, args.fill))
    if args.threads is not None:
        profile = dataclasses.replace(profile, threads=max(1, args.threads))
    return profile


def selected_scenarios(text: str) -> list[str]:
    wanted = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [name for name in wanted if name not in SCENARIOS]
    if unknown or not wanted:
        raise SystemExit(
            f"unknown scenario(s) {', '.join(unknown) or '(none)'}; choose from "
            f"{', '.join(SCENARIOS)}"
        )
    return [name for name in SCENARIOS if name in wanted]


def run_scenario(bench: Bench, name: str) -> ScenarioResult:
    title, scenario = SCENARIOS[name]
    load = background_load(bench.profile.load_probe_s)
    log(f"{name}: {title} (machine before it: {load})")
    started = time.perf_counter()
    try:
        result = scenario(bench)
    except (HarnessError, OSError, ValueError, KeyError, AssertionError) as exc:
        log(f"  {name} could not be measured: {exc}")
        traceback.print_exc()
        result = ScenarioResult(
            name, title, [Row(name, "error", "—", "—", "—", None)], error=str(exc)
        )
    result.seconds = time.perf_counter() - started
    result.details["background_load"] = load
    log(f"  {name} took {result.seconds:.1f} s")
    for row in result.rows:
        log(
            f"  {row.scenario}: {row.broker} | {row.reference} | ratio {row.ratio} | "
            f"target {row.target} | {'pass' if row.passed else 'FAIL'}"
        )
    for problem in result.problems:
        log(f"  problem: {problem}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = selected_scenarios(args.scenarios)
    profile = choose_profile(args)
    executable = wrk.find_wrk()
    if executable is None:
        print(wrk.INSTALL_HINT, file=sys.stderr)
        return EXIT_ERROR
    try:
        check_event_loop_stack()
    except HarnessError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_ERROR
    work_dir: Path = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    for leftover in ("logs", "tokens"):  # only what an earlier run wrote, nothing else
        shutil.rmtree(work_dir / leftover, ignore_errors=True)
    started = dt.datetime.now(dt.UTC)
    log(
        f"bench: profile {profile.name}, scenarios {','.join(names)}, "
        f"{profile.pairs} pair(s) of {profile.duration_s:g} s runs; work dir {work_dir}"
    )
    results: list[ScenarioResult] = []
    interrupted = False
    with sigterm_raises(), Supervisor(work_dir / "logs") as supervisor:
        bench: Bench | None = None
        try:
            bench = Bench(
                profile=profile,
                work_dir=work_dir,
                supervisor=supervisor,
                wrk_executable=executable,
                broker_log_level=args.broker_log_level,
                log=log,
                baseline_ref=args.baseline_ref,
            )
            for name in names:
                results.append(run_scenario(bench, name))
        except (KeyboardInterrupt, Terminated):
            interrupted = True
            log("bench: interrupted; stopping every process it started")
        except HarnessError as exc:
            log(f"bench: {exc}")
            return EXIT_ERROR
        finally:
            if bench is not None:
                bench.close()
    if interrupted:
        return EXIT_ERROR
    document = build_document(
        started=started,
        profile=profile,
        broker_log_level=args.broker_log_level,
        env=environment(wrk.wrk_version(executable)),
        results=results,
    )
    markdown, raw = write_reports(args.output_dir, document, results)
    log(f"bench: wrote {markdown} and {raw}")
    if any(result.status == "error" for result in results):
        return EXIT_ERROR
    if all(result.status == "pass" for result in results):
        return EXIT_PASSED
    return EXIT_TARGET_MISSED


if __name__ == "__main__":
    raise SystemExit(main())
