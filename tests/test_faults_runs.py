"""Run files that survive a kill or a full disk, and a resume that falls back (issue 21).

Training runs (agents/runs.py, agents/callbacks.py) and calibration traces
(fedenv/calibrate/traces.py): truncated and bit-flipped copies of every run file, a full disk
simulated by writes that fail with ENOSPC part-way, a read-only run directory, and (slow) SIGKILL
at random points of a short PPO run and of a calibration collection, each followed by a resume.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedenv.calibrate.collect import collect
from fedenv.calibrate.traces import TraceDamageWarning, TraceWriter, load_traces
from fedenv.config import EnvConfig

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------- helpers
def _truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _flip(path: Path, rng: random.Random) -> int:
    data = bytearray(path.read_bytes())
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return i


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` but the temporary ones of writes in progress."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp")
    }


class _DiskFull:
    """Files opened for writing under ``root`` share ``budget`` bytes; the write that passes it
    writes what fits, then fails with ENOSPC (a full disk). Records the digests of the files
    under ``root`` at that moment."""

    def __init__(self, root: Path, budget: int) -> None:
        self.root, self.budget, self.before = str(root), budget, None  # type: dict[str, str] | None
        self.hit = False

    def wrap(self, raw: Any) -> io.BufferedWriter:
        disk = self

        class Limited(io.BufferedWriter):
            def write(self, data: Any) -> int:
                data = bytes(data)
                if disk.hit or len(data) > disk.budget:
                    if not disk.hit:
                        disk.before = _digests(Path(disk.root))
                    disk.hit = True
                    super().write(data[: max(disk.budget, 0)])
                    super().flush()
                    disk.budget = 0
                    raise OSError(errno.ENOSPC, "No space left on device")
                disk.budget -= len(data)
                return super().write(data)

        return Limited(raw)

    @contextmanager
    def patched(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[_DiskFull]:
        real = io.open

        def fake_open(
            file: Any,
            mode: str = "r",
            buffering: int = -1,
            encoding: str | None = None,
            errors: str | None = None,
            newline: str | None = None,
            *args: Any,
            **kw: Any,
        ) -> Any:
            if not (
                isinstance(file, (str, os.PathLike))
                and str(file).startswith(self.root)
                and any(c in mode for c in "wax")
            ):
                return real(file, mode, buffering, encoding, errors, newline, *args, **kw)
            limited = self.wrap(
                real(file, mode.replace("t", "").replace("b", "") + "b", buffering=0)
            )
            return (
                limited
                if "b" in mode
                else io.TextIOWrapper(
                    limited, encoding=encoding or "utf-8", errors=errors, newline=newline
                )
            )

        with monkeypatch.context() as m:
            m.setattr(io, "open", fake_open)
            m.setattr(builtins, "open", fake_open)
            yield self


# ------------------------------------------------------------------ the atomic write
def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.runs import write_file

    target = tmp_path / "metrics.json"
    write_file(target, '{"old": 1}')
    with (
        _DiskFull(tmp_path, 3).patched(monkeypatch),
        pytest.raises(OSError, match=r"cannot write .*metrics.json.*disk is full.*--resume") as err,
    ):
        write_file(target, '{"new": 2, "more": "data"}')
    assert err.value.errno == errno.ENOSPC
    assert target.read_text() == '{"old": 1}' and [p.name for p in tmp_path.iterdir()] == [
        "metrics.json"
    ]


# ------------------------------------------------------------------------ PPO runs
pytest.importorskip("stable_baselines3")

#: The smallest run that exercises everything: 2 envs x 64 steps per update, 4 updates,
#: evaluations and checkpoints every 256 steps (0, 256, 512). On the weighted objective and the
#: label_mix features, whose runs these tests' expectations (which evaluation is best) were
#: written for.
# The assumed surrogate constants and no arrival pruner, pinned: which evaluation is best (the
# tests below need the model of step 512) must not move with the defaults.
TINY = [
    "--config", str(Path(__file__).resolve().parent / "data" / "faults_run.yaml"),
    "--total-timesteps", "512", "--n-envs", "2", "--n-steps", "64", "--batch-size", "64",
    "--n-epochs", "1", "--eval-freq", "256", "--eval-episodes", "1", "--checkpoint-freq", "256",
    "--net-arch", "16", "--no-progress-bar", "--no-tensorboard", "--seed", "3", "--objective",
    "weighted", "--obs-features", "label_mix", "--prune", "never",
]  # fmt: skip


def _train(run: Path, *extra: str) -> Path:
    from agents import train_ppo

    return train_ppo.main([*TINY, "--run-dir", str(run), *extra])


def _resume(run: Path, *extra: str) -> Path:
    from agents import train_ppo

    return train_ppo.main(["--run-dir", str(run), "--resume", "--no-progress-bar", *extra])


def _rows(run: Path) -> list[int]:
    from agents.callbacks import read_evaluations

    return [int(r["timesteps"]) for r in read_evaluations(run / "evaluations.csv")]


def _check_loadable(run: Path, steps: int) -> None:
    """The run is whole: metrics, strictly increasing evaluations, and every model loads."""
    from agents.evaluate import load_policy
    from agents.runs import RunDir, pair_problem

    r = RunDir(run)
    assert json.loads(r.metrics.read_text())["timesteps"] == steps
    rows = _rows(run)
    assert rows == sorted(set(rows)) and rows[-1] == steps, rows
    for model, norm in ((r.model, r.normalizer), (r.best_model, r.best_normalizer)):
        assert pair_problem(model, norm) is None, model
    for which in ("best", "final", "latest"):
        load_policy(f"ppo:{run}@{which}", r.env_config())


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("faults") / "finished"
    _train(run)
    return run


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def test_every_run_file_is_written_atomically_and_checked(finished: Path) -> None:
    from agents.runs import RunDir, pair_problem

    r = RunDir(finished)
    assert not [p for p in finished.rglob(".*") if p.is_file()]  # no temporary file left
    for name in ("args.yaml", "env_config.yaml"):
        assert (finished / name).read_text().splitlines()[-1].startswith("# sha256 ")
    assert r.read_meta()["run_format"] == 2 and r.read_meta()["sessions"][0]["wall_s"] > 0
    for steps in (256, 512):
        assert pair_problem(r.checkpoint(steps), r.checkpoint(steps, "vecnormalize_")) is None
    assert pair_problem(r.model, r.normalizer, stamped=True) is None
    assert _rows(finished) == [0, 256, 512]


def test_a_finished_run_extended_continues_from_its_final_model(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = json.loads((run / "metrics.json").read_text())["wall_s_total"]
    _resume(run, "--total-timesteps", "768")
    assert "continuing from step 512 (model.zip (the final model))" in capsys.readouterr().out
    assert _rows(run) == [0, 256, 512, 768]
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "meta.json").read_text())
    assert metrics["wall_s_total"] == pytest.approx(sum(s["wall_s"] for s in meta["sessions"]))
    assert metrics["wall_s_total"] > before + metrics["wall_s_this_session"] * 0.99
    _check_loadable(run, 768)


def test_damaged_newest_checkpoint_is_skipped_with_a_warning(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agents.runs import RunDir, RunRepairWarning

    # the full-disk case of the issue: the final model and the newest checkpoint are partial,
    # the newest checkpoint's normaliser was never written
    _truncate(run / "model.zip", 0.3)
    _truncate(run / "checkpoints" / "ckpt_512_steps.zip", 0.5)
    (run / "checkpoints" / "ckpt_vecnormalize_512_steps.pkl").unlink()
    with pytest.warns(
        RunRepairWarning,
        match=r"skipped model.zip: .*does not open.*checkpoints/ckpt_512_steps.zip: .*continuing "
        r"from checkpoints/ckpt_256_steps.zip at step 256",
    ):
        _resume(run)
    assert "continuing from step 256" in capsys.readouterr().out
    assert (run / "checkpoints" / "ckpt_512_steps.zip").is_file()  # the new branch's checkpoint
    assert (
        run / "checkpoints" / "ckpt_512_steps.zip.broken"
    ).is_file()  # the damaged one, kept aside
    assert _rows(run) == [0, 256, 512]  # the abandoned branch's 512 dropped, the new one's kept
    assert RunDir(run).read_meta()["sessions"][-1]["resumed_from_step"] == 256
    _check_loadable(run, 512)


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        "bit-flipped",
        "normaliser missing",
        "normaliser truncated",
        "normaliser of another step",
    ],
)
def test_resume_point_skips_each_kind_of_damage(run: Path, damage: str) -> None:
    from agents.runs import RunDir

    r = RunDir(run)
    r.model.unlink()
    zip_path, norm = r.checkpoint(512), r.checkpoint(512, "vecnormalize_")
    if damage == "truncated":
        _truncate(zip_path, 0.9)
    elif damage == "bit-flipped":
        with zipfile.ZipFile(zip_path) as zf:  # a flipped bit inside the policy weights
            info = zf.getinfo("policy.pth")
        data = bytearray(zip_path.read_bytes())
        data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0x10
        zip_path.write_bytes(bytes(data))
    elif damage == "normaliser missing":
        norm.unlink()
    elif damage == "normaliser truncated":
        _truncate(norm)
    else:
        shutil.copy(r.checkpoint(256, "vecnormalize_"), norm)
    point, skipped = r.resume_point()
    assert point is not None and point.steps == 256
    expected = {
        "truncated": "does not open", "bit-flipped": "fails the CRC check",
        "normaliser missing": "is missing", "normaliser truncated": "does not load",
        "normaliser of another step": "was saved at step 256, the model at step 512",
    }  # fmt: skip
    assert len(skipped) == 1 and expected[damage] in skipped[0], skipped
    assert r.latest_checkpoint()[0] == 256  # type: ignore[index]


def test_a_corrupt_best_model_is_repaired_on_resume(run: Path) -> None:
    from agents.runs import RunRepairWarning

    _truncate(run / "best" / "model.zip")
    with pytest.warns(
        RunRepairWarning,
        match=r"best/ is damaged .*re-saved it from checkpoints/ckpt_512_steps.zip",
    ):
        _resume(run)  # nothing left to train: only the bookkeeping
    assert _rows(run) == [0, 256, 512]
    _check_loadable(run, 512)
    proc = subprocess.run(
        [sys.executable, "-m", "agents.evaluate", str(run), "--episodes", "1"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_best_from_an_abandoned_branch_is_not_kept(run: Path) -> None:
    from agents.runs import RunDir, RunRepairWarning, model_steps

    r = RunDir(run)
    r.model.unlink()
    _truncate(
        r.checkpoint(512)
    )  # resume from 256: best/ (the model of step 512) is of the abandoned branch
    with pytest.warns(RunRepairWarning) as record:
        _resume(run, "--total-timesteps", "256")
    text = " ".join(str(w.message) for w in record)
    assert (
        "dropped 1 evaluation row(s) of step(s) 512" in text
        and "best/ held the model of step 512" in text
    )
    assert _rows(run) == [0, 256] and model_steps(r.best_model) == 256


# ------------------------------------------------------------ truncated and flipped files
@pytest.mark.parametrize("name", ["args.yaml", "env_config.yaml", "meta.json"])
@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "emptied"])
def test_damaged_start_files_give_a_clear_error(run: Path, name: str, damage: str) -> None:
    from agents import train_ppo
    from agents.runs import prepare_run

    path = run / name
    if damage == "truncated":
        _truncate(path, 0.6)
    elif damage == "emptied":
        path.write_text("")
    else:
        rng = random.Random(f"{name}")
        _flip(path, rng)
    args, given = train_ppo.Args(run_dir=str(run), resume=True), {"run_dir", "resume"}
    try:
        prepare_run(args, given, "ppo", train_ppo.Args)
    except (ValueError, FileNotFoundError) as err:
        message = str(err)
        assert name in message and ("restore" in message or "trained with" in message), message
        return
    # only a flip inside a JSON string keeps meta.json valid (its content is history, not state)
    assert name == "meta.json" and damage == "bit-flipped"


def test_a_truncated_env_config_does_not_resume_with_defaults(run: Path) -> None:
    from agents.runs import RunDir

    lines = (run / "env_config.yaml").read_text().splitlines(keepends=True)
    (run / "env_config.yaml").write_text("".join(lines[:-5]))  # whole lines cut: still valid YAML
    with pytest.raises(
        ValueError,
        match=r"env_config.yaml: truncated: its last line, the checksum, is missing.*restore "
        r"env_config.yaml",
    ):
        RunDir(run).env_config()


@pytest.mark.parametrize(
    "name",
    [
        "eval_state.json",
        "metrics.json",
        "evaluations.csv",
        "vecnormalize.pkl",
        "model.zip",
        "best/vecnormalize.pkl",
        "checkpoints/ckpt_512_steps.zip",
    ],
)
def test_damaged_state_files_are_rebuilt_or_skipped(run: Path, name: str) -> None:
    from agents.runs import RunDir

    _truncate(run / name, 0.7)
    _resume(run)
    json.loads(RunDir(run).eval_state.read_text())
    _check_loadable(run, 512)


def test_a_read_only_run_directory_gives_a_clear_error(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from agents import train_ppo
    from agents.runs import prepare_run

    before = _digests(run)

    def refuse(*args: Any, **kw: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(
        tempfile, "mkstemp", refuse
    )  # root ignores chmod: refuse as a read-only dir would
    with pytest.raises(
        PermissionError,
        match=r"cannot write in the run directory .*Permission denied.*must be writable",
    ):
        prepare_run(
            train_ppo.Args(run_dir=str(run), resume=True),
            {"run_dir", "resume"},
            "ppo",
            train_ppo.Args,
        )
    assert _digests(run) == before


# ------------------------------------------------------------------------ full disk
def _full_disk_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    from agents.runs import RunDir, pair_problem

    run = tmp_path / f"disk{budget}"
    disk = _DiskFull(run, budget)
    with disk.patched(monkeypatch), pytest.raises(OSError) as err:
        _train(run)
    assert err.value.errno == errno.ENOSPC and "--resume" in str(err.value), err.value
    assert disk.before is not None
    after = _digests(run)
    lost = {name for name, digest in disk.before.items() if after.get(name) != digest}
    assert not lost, f"the failed write damaged {lost}"
    assert not [p for p in run.rglob(".*.tmp")]
    r = RunDir(run)
    for steps in r._checkpoint_steps():
        assert pair_problem(r.checkpoint(steps), r.checkpoint(steps, "vecnormalize_")) is None
    if r.latest_checkpoint() is None:  # full before the first checkpoint: start again
        shutil.rmtree(run)
        _train(run)
    else:
        _resume(run)
    _check_loadable(run, 512)


@pytest.mark.parametrize("budget", [30_000, 170_000])
def test_a_full_disk_loses_nothing_saved_and_the_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    _full_disk_then_resume(tmp_path, monkeypatch, budget)


@pytest.mark.slow
@pytest.mark.parametrize(
    "budget", [2_000, 60_000, 110_000, 230_000, 270_000, 285_000]
)  # a run writes about 308 kB
def test_a_full_disk_at_more_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    _full_disk_then_resume(tmp_path, monkeypatch, budget)


# ------------------------------------------------------------------ calibration traces
def _surrogate_config(rounds: int = 4) -> EnvConfig:
    return EnvConfig.from_preset("switching").replace(
        num_rounds=rounds, learning={"backend": "surrogate"}
    )


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("traces") / "t.jsonl"
    collect(_surrogate_config(), ["explore", "random"], [0, 1], path, progress=False)
    return path


def _same_episodes(a: list[Any], b: list[Any]) -> None:
    assert [e.key for e in a] == [e.key for e in b]
    for x, y in zip(a, b):
        for name in ("rank", "ratio", "success", "energy_j", "accuracy", "loss", "reward"):
            np.testing.assert_array_equal(
                getattr(x, name), getattr(y, name), err_msg=f"{x.key} {name}"
            )


def test_a_torn_header_with_the_next_record_appended_skips_only_that_episode(
    traces: Path, tmp_path: Path
) -> None:
    lines = traces.read_text().splitlines(keepends=True)
    heads = [i for i, line in enumerate(lines) if line.startswith('{"type": "episode"')]
    # the second episode's header torn, and the third episode written straight after it (the
    # writer of old appended to a torn line)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(lines[: heads[1]]) + lines[heads[1]][:300] + "".join(lines[heads[2] :]))
    with pytest.warns(
        TraceDamageWarning, match=r"damaged line\(s\) \d+ .*every other complete episode is kept"
    ):
        kept = load_traces(bad)
    clean = load_traces(traces)
    _same_episodes(kept, [e for e in clean if e.key != clean[1].key])
    # a partial line whose key is readable, with a record appended: that episode is skipped
    rounds = [i for i, line in enumerate(lines) if '"type": "round"' in line]
    torn = lines[rounds[1]][:60] + lines[rounds[1] + 1]
    bad.write_text("".join(lines[: rounds[1]]) + torn + "".join(lines[rounds[1] + 2 :]))
    with pytest.warns(
        TraceDamageWarning, match=rf"skipped the episode\(s\) they belong to: {clean[0].key}"
    ):
        _same_episodes(load_traces(bad), clean[1:])
    # the collector repairs the file and reruns only what is missing
    with pytest.warns(TraceDamageWarning):
        assert collect(_surrogate_config(), ["explore", "random"], [0, 1], bad, progress=False) == [
            clean[0].key
        ]
    again = load_traces(bad)
    _same_episodes(sorted(again, key=lambda e: e.key), sorted(clean, key=lambda e: e.key))


def test_truncated_and_bit_flipped_trace_files(traces: Path, tmp_path: Path) -> None:
    clean = load_traces(traces)
    data = traces.read_bytes()
    starts = [i for i in range(len(data)) if data.startswith(b'{"type": "episode"', i)]
    ends = [data.index(b'"type": "end"', i) for i in starts]
    rng = random.Random(0)
    bad = tmp_path / "bad.jsonl"
    for cut in sorted(rng.sample(range(len(data)), 12)):
        bad.write_bytes(data[:cut])
        with np.errstate(all="ignore"):
            kept = load_traces(bad)  # never raises; the complete episodes before the cut are read
        _same_episodes(kept, clean[: sum(1 for e in ends if data.index(b"\n", e) < cut)])
    for _ in range(12):
        bad.write_bytes(data)
        i = _flip(bad, rng)
        with _ignore_warnings():
            kept = {e.key: e for e in load_traces(bad)}  # never raises
        # only the episode holding the flipped byte is affected: skipped (its line no longer
        # parses, or its rounds no longer count up) or, when the flip left a valid number, read
        # with that value (undetectable without a checksum per record)
        affected = {e.key for e in clean if e.key not in kept or not _equal(kept[e.key], e)}
        assert len(affected) <= 1, (i, affected)
        # the episode the flipped byte belongs to
        holder = clean[sum(1 for e in starts if e <= i) - 1].key
        flipped = bad.read_bytes()
        with _ignore_warnings():
            try:
                collect(
                    _surrogate_config(), ["explore", "random"], [0, 1], bad, progress=False
                )  # reruns a skipped one
            except ValueError as exc:
                # a flip in a header's config that still parses: the resume is refused, naming
                # that episode, and the file is left as it was
                assert f"episode {holder!r}" in str(exc) and "config" in str(exc), exc
                assert holder in kept and bad.read_bytes() == flipped
                continue
            again = {e.key: e for e in load_traces(bad)}
        assert set(again) == {e.key for e in clean}
        assert all(
            _equal(again[e.key], e) for e in clean if e.key not in affected or e.key not in kept
        )


def test_a_resume_refused_for_a_damaged_header_leaves_the_file_as_it_was(
    traces: Path, tmp_path: Path
) -> None:
    """A flipped byte in a header's config key that still parses as JSON (o -> DEL): the
    resume is refused before the writer, which re-serialises the lines it keeps, rewrites the
    file (the random flips above hit such a byte only now and then)."""
    data = traces.read_bytes()
    last = data.rindex(b'{"type": "episode"')
    i = data.index(b"heterogeneity_penalty", last) + 5
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :])
    flipped = bad.read_bytes()
    with pytest.raises(ValueError, match="does not load"):
        collect(_surrogate_config(), ["explore", "random"], [0, 1], bad, progress=False)
    assert bad.read_bytes() == flipped


def _equal(a: Any, b: Any) -> bool:
    return all(
        np.array_equal(getattr(a, n), getattr(b, n))
        for n in ("rank", "ratio", "success", "energy_j", "accuracy", "loss", "reward")
    )


@contextmanager
def _ignore_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_a_full_disk_leaves_no_torn_trace_line(
    traces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.jsonl"
    size = traces.stat().st_size
    for budget in (size // 3, 2 * size // 3):
        if path.exists():
            path.unlink()
        disk = _DiskFull(tmp_path, budget)
        with disk.patched(monkeypatch), pytest.raises(OSError):
            collect(_surrogate_config(), ["explore", "random"], [0, 1], path, progress=False)
        assert path.read_bytes().endswith(b"\n")  # the failed append was cut off
        _same_episodes(load_traces(path), load_traces(traces)[: len(TraceWriter(path).completed)])
        collect(_surrogate_config(), ["explore", "random"], [0, 1], path, progress=False)
        _same_episodes(load_traces(path), load_traces(traces))


# -------------------------------------------------------------------------- SIGKILL
#: Runs a module's main under a kill switch: FAULT_KILL="replace:N" kills before the N-th
#: os.replace (a temporary file written, not yet renamed), "replaced:N" right after it,
#: "fsync:N" at the N-th fsync, "torn:N" writes half of the N-th trace line then kills,
#: "time:S" S seconds after the run directory or trace file is opened; "count" prints the calls.
KILLER = r"""
import os, runpy, signal, sys, threading
mode, _, n = os.environ["FAULT_KILL"].partition(":")
n = float(n or 0)
calls = {"replace": 0, "fsync": 0, "write": 0}
def kill():
    os.kill(os.getpid(), signal.SIGKILL)
real_replace, real_fsync = os.replace, os.fsync
def replace(a, b):
    calls["replace"] += 1
    if mode == "replace" and calls["replace"] == n: kill()
    real_replace(a, b)
    if mode == "replaced" and calls["replace"] == n: kill()
def fsync(fd):
    calls["fsync"] += 1
    real_fsync(fd)
    if mode == "fsync" and calls["fsync"] == n: kill()
os.replace, os.fsync = replace, fsync
def start_timer():
    if mode == "time":
        threading.Timer(n, kill).start()
module = sys.argv[1]
if module.startswith("agents"):
    import agents.runs as runs
    real_start = runs.RunDir.write_start
    def write_start(self, *a, **kw):
        start_timer()
        return real_start(self, *a, **kw)
    runs.RunDir.write_start = write_start
else:
    import fedenv.calibrate.traces as traces
    real_init, real_write = traces.TraceWriter.__init__, traces.TraceWriter._write
    def init(self, *a, **kw):
        start_timer()
        real_init(self, *a, **kw)
    def write(self, rec):
        calls["write"] += 1
        if mode == "torn" and calls["write"] == n:
            import json
            line = json.dumps(traces._jsonable(rec)) + "\n"
            with self.path.open("a") as fh:
                fh.write(line[: len(line) // 2])
            kill()
        real_write(self, rec)
    traces.TraceWriter.__init__, traces.TraceWriter._write = init, write
sys.argv = [module, *sys.argv[2:]]
try:
    runpy.run_module(module, run_name="__main__")
finally:
    if mode == "count":
        print("CALLS", calls["replace"], calls["fsync"], calls["write"], flush=True)
"""


def _killed(
    module: str, argv: list[str], fault: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", FAULT_KILL=fault)
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, module, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _kill_points(
    rng: random.Random, replaces: int, fsyncs: int, seconds: float, n: int, writes: int = 0
) -> list[str]:
    kinds = ["replace", "replaced"] * (replaces > 0) + ["fsync", "time"] + ["torn"] * (writes > 0)
    points = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        limit = {"replace": replaces, "replaced": replaces, "fsync": fsyncs, "torn": writes}.get(
            kind, 0
        )
        points.append(
            f"time:{rng.uniform(0.0, seconds):.2f}"
            if kind == "time"
            else f"{kind}:{rng.randint(1, limit)}"
        )
    return points


@pytest.mark.slow
def test_sigkill_at_random_points_of_a_ppo_run_then_resume(tmp_path: Path) -> None:
    """After a kill anywhere, --resume completes the run: every step trained, a clean learning
    curve, every model loadable. The final evaluation equals the uninterrupted run's when the kill
    came after the final model was saved; a resume from an earlier checkpoint cannot reproduce it
    (SB3 checkpoints hold no RNG, env or rollout state, and the resumed session draws fresh
    episodes on purpose), so it is checked for completeness only."""
    from agents.runs import RunDir, pair_problem

    argv = [*TINY, "--total-timesteps", "1024"]
    ref = tmp_path / "reference"
    out = _killed("agents.train_ppo", [*argv, "--run-dir", str(ref)], "count", check=True)
    replaces, fsyncs = map(int, out.stdout.split("CALLS")[1].split()[:2])
    reference_last = json.loads((ref / "metrics.json").read_text())["last_eval"]
    rng = random.Random(21)
    outcomes = []
    points = [
        *_kill_points(rng, replaces, fsyncs, 1.5, 12),
        f"replaced:{replaces - 1}",
    ]  # the last: after the final save
    for i, fault in enumerate(points):
        run = tmp_path / f"k{i}"
        proc = _killed("agents.train_ppo", [*argv, "--run-dir", str(run)], fault)
        killed = proc.returncode == -9
        r = RunDir(run)
        final_saved = (
            r.model.is_file() and pair_problem(r.model, r.normalizer, stamped=True) is None
        )
        if (
            r.latest_checkpoint() is None and not final_saved
        ):  # before the first checkpoint: a new run, as --resume says
            _killed("agents.train_ppo", [*argv, "--run-dir", str(run)], "none", check=True)
        else:
            _killed(
                "agents.train_ppo",
                ["--run-dir", str(run), "--resume", "--no-progress-bar"],
                "none",
                check=True,
            )
        _check_loadable(run, 1024)
        last = json.loads((run / "metrics.json").read_text())["last_eval"]
        if final_saved or not killed:
            assert last["mean_return"] == reference_last["mean_return"], fault
        outcomes.append((fault, killed, final_saved))
    assert sum(k for _, k, _ in outcomes) >= 10 and outcomes[-1][1:] == (True, True), outcomes


@pytest.mark.slow
def test_sigkill_at_random_points_of_a_calibration_collection_then_resume(tmp_path: Path) -> None:
    """A collection killed anywhere (a torn line included) and rerun gives the same episodes as
    an uninterrupted one: an episode is replayed from its seed."""
    argv = [
        "collect",
        "--backend",
        "surrogate",
        "--rounds",
        "4",
        "--policies",
        "explore",
        "random",
        "--seeds",
        "0",
        "1",
        "2",
        "--no-progress",
    ]
    ref = tmp_path / "ref.jsonl"
    out = _killed("fedenv.calibrate", [*argv, "--out", str(ref)], "count", check=True)
    replaces, fsyncs, writes = map(int, out.stdout.split("CALLS")[1].split()[:3])
    reference = load_traces(ref)
    assert len(reference) == 6
    rng = random.Random(7)
    killed = 0
    points = _kill_points(rng, replaces, fsyncs, 0.3, 12, writes=writes)
    for i, fault in enumerate(points):
        path = tmp_path / f"k{i}.jsonl"
        proc = _killed("fedenv.calibrate", [*argv, "--out", str(path)], fault)
        killed += proc.returncode == -9
        _killed("fedenv.calibrate", [*argv, "--out", str(path)], "none", check=True)
        with _ignore_warnings():
            _same_episodes(
                sorted(load_traces(path), key=lambda e: e.key),
                sorted(reference, key=lambda e: e.key),
            )
    assert killed >= 10, points


def test_damaged_constraint_state_is_a_clear_error(tmp_path):
    from agents.constraints import DualAscentCallback

    path = tmp_path / "constraint.json"
    assert DualAscentCallback.saved_lambda(path) == 0.0
    path.write_text('{"lambda": 0.25, "target": 0.8}')
    assert DualAscentCallback.saved_lambda(path) == 0.25
    path.write_text('{"lambda": 0.2')
    with pytest.raises(
        ValueError, match=r"constraint.json: damaged .*delete it to restart the multiplier"
    ):
        DualAscentCallback.saved_lambda(path)
