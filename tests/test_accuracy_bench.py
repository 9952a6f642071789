"""The accuracy benchmark's plumbing: presets, row settings, size checks and the time budget."""

import importlib.util
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def acc():
    spec = importlib.util.spec_from_file_location(
        "accuracy_bench_plumbing", ROOT / "benchmarks" / "accuracy.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_preset_defaults_and_explicit_flags_win(acc, tmp_path):
    args = acc.parse_args(["--preset", "gpu-full", "--data", str(tmp_path)])
    assert (args.schedule, args.image_size, args.device, args.precision) == ("full", 256, "cuda", "bf16")
    assert args.students == "mnv2-unet" and args.seeds == "0,1,2" and args.jobs == 8
    args = acc.parse_args(["--preset", "gpu-full", "--data", str(tmp_path), "--device", "cpu", "--jobs", "1"])
    assert (args.device, args.jobs, args.image_size) == ("cpu", 1, 256)
    plain = acc.parse_args(["--data", str(tmp_path)])
    assert (plain.schedule, plain.device, plain.students) == ("reduced", "cpu", None)


def test_rows_expand_the_student_and_take_list_settings(acc):
    rows = acc.expand_rows(acc.GPU_ROWS, "effl0-unet,unet-s")
    assert rows[:6] == ["samfed", "samfed-no-agreement", "sam-only", "fixmatch", "supervised", "centralised"]
    assert "samfed@students=effl0-unet/unet-s/resunet-lite" in rows and "samfed:reliable" in rows
    method, extra = acc.parse_row("fixmatch@students=effl0-unet/unet-s/resunet-lite+lambda_kd=0.5")
    assert method == "fixmatch"
    assert extra == {"students": ["effl0-unet", "unet-s", "resunet-lite"], "lambda_kd": 0.5}
    with pytest.raises(SystemExit, match="lambda_kd needs float"):
        acc.parse_row("samfed@lambda_kd=abc")
    with pytest.raises(SystemExit, match="unknown setting 'nope'"):
        acc.parse_row("samfed@nope=1")


def _args(acc, tmp_path, *flags):
    return acc.parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "out"), *flags])


def test_check_rows_refuses_sizes_a_student_cannot_take(acc, tmp_path):
    args = _args(acc, tmp_path, "--image-size", "80", "--students", "unet-s")
    acc.check_rows(args, ["samfed", "fixmatch"], 0)  # unet-s: multiples of 16
    with pytest.raises(
        SystemExit, match="not a multiple of 32, which student mnv2-unet needs; use --image-size 64 or 96"
    ):
        acc.check_rows(args, ["samfed", "samfed@students=unet-s/mnv2-unet"], 0)
    with pytest.raises(SystemExit, match="unknown students entry 'nope'"):
        acc.check_rows(_args(acc, tmp_path, "--students", "nope"), ["samfed"], 0)


def test_status_of_an_empty_benchmark(acc, tmp_path):
    args = _args(acc, tmp_path)
    lines = []
    assert acc.print_status(args, ["samfed", "sam-only"], [0, 1], lines.append) == 4
    assert lines[0].endswith("0 of 4 runs done") and lines[1] == "  seed 0 samfed: not started"


def test_budget_interrupts_at_the_deadline(acc):
    with acc.budget(None):
        pass
    with pytest.raises(acc.BudgetSpent), acc.budget(time.time() - 1):
        pytest.fail("a spent budget must not run the body")
    t0 = time.time()
    with pytest.raises(acc.BudgetSpent), acc.budget(time.time() + 0.2):
        while time.time() - t0 < 5:
            time.sleep(0.01)
    assert time.time() - t0 < 2
    assert issubclass(acc.BudgetSpent, KeyboardInterrupt)  # train() keeps the finished rounds


PARENT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, {bench!r})
import accuracy

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=accuracy._job_init,
                             initargs=(1, os.getpid())) as pool:
        busy = pool.submit(time.sleep, 120)
        while not busy.running():
            time.sleep(0.1)
        print(*pool._processes, flush=True)
        busy.result()
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_busy_parallel_worker_exits_when_the_benchmark_process_is_killed(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(bench=str(ROOT / "benchmarks")))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        time.sleep(1.0)  # the task is running in the worker
        assert workers and all(_alive(p) for p in workers) and parent.poll() is None
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.time() + 30
        while any(_alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers)
    finally:
        parent.kill()
