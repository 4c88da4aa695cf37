"""Command line of the calibration:
``python -m fedenv.calibrate collect|pack|fit|report|inventory|replay``.

    python -m fedenv.calibrate collect --task sst2 --rounds 15 --threads 1 \\
        --policies lyapunov max min_rank greedy round_robin random --seeds 0 \\
        --out results/calibration/v3/sst2_s0.jsonl
    python -m fedenv.calibrate pack results/calibration/v3/sst2_s0.jsonl \\
        --into configs/calibration/traces_v3/sst2/   # complete episodes, gzip-compressed, to commit
    python -m fedenv.calibrate fit --traces configs/calibration/traces_v3/sst2/ \\
        --heldout-seeds 100 101 102 --objective both --out configs/calibration/sst2_minilm.yaml
    python -m fedenv.calibrate report --traces configs/calibration/traces_v3/sst2/ \\
        --calibration configs/calibration/sst2_minilm.yaml --heldout-seeds 100 101 102 --out
        docs/fidelity.md
    python -m fedenv.calibrate inventory --traces configs/calibration/traces_v3/sst2/
    python -m fedenv.calibrate replay \\
        configs/calibration/traces_v2/sst2_long/sst2_long_s101.jsonl.gz --policy lyapunov \\
        --set learning.lora.server_step=data_share

``bash scripts/calibrate.sh`` runs the fit and every report of docs/fidelity.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from fedenv import atomic
from fedenv.config import (
    ConfigError,
    EnvConfig,
    SurrogateConfig,
    calibration_surrogate,
    parse_set,
)
from fedenv.scenarios import named_config

DEFAULT_POLICIES = [
    "explore",
    "random",
    "max",
    "greedy",
    "fixed_rank:rank=2",
    "lyapunov:V=1",
    "lyapunov:V=100",
]


def _command(argv: list[str]) -> str:
    return "python -m fedenv.calibrate " + shlex.join(argv)


def collect_config(args: argparse.Namespace) -> EnvConfig:
    """The env config of a collection: base config or preset, then the flags, then ``--set``."""
    overrides: dict[str, Any] = {"learning": {"backend": args.backend, "task": args.task}}
    if args.rounds is not None:
        overrides["num_rounds"] = args.rounds
    devices = {
        k: v
        for k, v in (
            ("num_devices", args.devices),
            ("local_steps", args.local_steps),
            ("batch_size", args.batch_size),
        )
        if v is not None
    }
    if devices:
        overrides["devices"] = devices
    lora: dict[str, Any] = {}
    if args.eval_samples is not None:
        lora["eval_samples"] = args.eval_samples
    if args.threads is not None:
        lora["num_threads"] = args.threads
    if lora:
        overrides["learning"]["lora"] = lora
    try:
        if args.calibration:
            overrides["learning"]["surrogate"] = calibration_surrogate(args.calibration)
        overrides = parse_set(args.set, overrides)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    return named_config(args.config, **overrides)


def cmd_collect(args: argparse.Namespace, argv: list[str]) -> None:
    from fedenv.calibrate.collect import collect

    cfg = collect_config(args)
    out = Path(args.out or f"results/calibration/{args.task}_{args.backend}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_file(
        out.with_suffix(".config.yaml"),
        f"# {_command(argv)}\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False),
    )
    ran = collect(cfg, args.policies, args.seeds, out, progress=not args.no_progress)
    print(
        f"{len(ran)} episodes recorded in {out}"
        + (f": {', '.join(ran)}" if ran else " (all were already complete)")
    )


def _load(paths: list[str]) -> list[Any]:
    from fedenv.calibrate.traces import load_traces

    episodes = load_traces(paths)
    if not episodes:
        raise SystemExit(f"no complete episode in {', '.join(paths)}")
    return episodes


def _split(
    episodes: list[Any], heldout: list[int] | None, need_train: bool = True
) -> tuple[list[Any], list[Any], list[int]]:
    seeds = sorted({ep.seed for ep in episodes})
    if heldout is None:
        heldout = seeds[len(seeds) - max(1, len(seeds) // 3) :] if len(seeds) > 1 else []
    train = [ep for ep in episodes if ep.seed not in heldout]
    held = [ep for ep in episodes if ep.seed in heldout]
    if need_train and not train:
        raise SystemExit(f"every episode is on a held-out seed ({heldout}); nothing left to fit")
    return train, held, list(heldout)


def cmd_fit(args: argparse.Namespace, argv: list[str]) -> None:
    from fedenv.calibrate.fit import calibration_yaml, fit_surrogate

    episodes = _load(args.traces)
    if args.backend:
        episodes = [ep for ep in episodes if ep.backend == args.backend]
    tasks = sorted({ep.task for ep in episodes})
    if len(tasks) != 1:
        raise SystemExit(f"the traces mix tasks {tasks}; fit one task at a time")
    train, held, heldout = _split(episodes, args.heldout_seeds)
    base = EnvConfig.from_yaml(args.base).learning.surrogate if args.base else SurrogateConfig()
    result = fit_surrogate(
        train,
        base,
        heldout=held,
        objective=args.objective,
        parameters=args.parameters,
        starts=args.starts,
        loss=args.loss,
        f_scale=args.f_scale,
    )
    model = str(train[0].config.get("learning", {}).get("lora", {}).get("model_name_or_path", "?"))
    text = calibration_yaml(
        result, task=tasks[0], model=model, command=_command(argv), traces=", ".join(args.traces)
    )
    print(text)
    print(f"train: {json.dumps(result.train_errors)}")
    print(f"held-out (seeds {heldout}): {json.dumps(result.heldout_errors)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_file(args.out, text)
        print(f"-> {args.out}")


def cmd_report(args: argparse.Namespace, argv: list[str]) -> None:
    from fedenv.calibrate.report import fidelity_report, render_markdown, update_markdown

    episodes = _load(args.traces)
    if args.backend:
        episodes = [ep for ep in episodes if ep.backend == args.backend]
    surrogate = EnvConfig.from_yaml(args.calibration).learning.surrogate
    _, _, heldout = _split(episodes, args.heldout_seeds, need_train=False)
    rep = fidelity_report(episodes, surrogate, heldout, policies=args.policies, window=args.window)
    md = render_markdown(rep, command=_command(argv), calibration=args.calibration)
    print(md)
    if args.out:
        update_markdown(args.out, args.block or rep.task, md)
        print(f"-> {args.out} (block {args.block or rep.task})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "task": rep.task,
            "heldout_seeds": rep.heldout_seeds,
            "missing_seeds": rep.missing_seeds,
            "one_step": rep.one_step,
            "kendall_tau": rep.kendall_tau,
            "window": rep.window,
            "kendall_tau_window": rep.kendall_tau_window,
            "mean_abs_window_error": rep.mean_abs_window_error,
            "mean_abs_final_error": rep.mean_abs_final_error,
            "max_abs_final_error": rep.max_abs_final_error,
            "rows": [
                {
                    "policy": r.policy,
                    "seeds": r.seeds,
                    "real": r.real,
                    "surrogate": r.surrogate,
                    "real_window": r.real_window,
                    "surrogate_window": r.surrogate_window,
                }
                for r in rep.rows
            ],
            "real_order": rep.real_order,
            "surrogate_order": rep.surrogate_order,
            "traces": rep.traces,
            "noise": rep.noise,
            "calibration": args.calibration,
            "command": _command(argv),
        }
        atomic.write_file(args.json, json.dumps(payload, indent=2))


def cmd_inventory(args: argparse.Namespace, argv: list[str]) -> None:
    from fedenv.calibrate.report import trace_inventory, update_markdown
    from fedenv.calibrate.traces import trace_files

    md = f"Generated by `{_command(argv)}`.\n\n" + trace_inventory(trace_files(args.traces))
    print(md)
    if args.out:
        update_markdown(args.out, args.block, md)
        print(f"-> {args.out} (block {args.block})")


def cmd_pack(args: argparse.Namespace, argv: list[str]) -> None:
    from fedenv.calibrate.traces import pack_trace

    for path in args.traces:
        out, n = pack_trace(path, args.into)
        print(f"{path} -> {out} ({n} complete episodes)")


def cmd_replay(args: argparse.Namespace, argv: list[str]) -> None:
    from fedenv.calibrate.replay import replay_episode, trace_config

    recorded = _load([args.trace])
    episodes = [ep for ep in recorded if ep.policy == args.policy]
    if args.seed is not None:
        episodes = [ep for ep in episodes if ep.seed == args.seed]
    if len(episodes) != 1:
        found = sorted({(ep.policy, ep.seed) for ep in recorded})
        raise SystemExit(
            f"{args.trace} holds {len(episodes)} complete episodes of policy {args.policy!r}"
            + ("" if args.seed is None else f" and seed {args.seed}")
            + f"; name one with --policy and --seed (episodes: {found})"
        )
    episode = episodes[0]
    overrides: dict[str, Any] = {}
    if args.threads is not None:
        overrides["learning"] = {"lora": {"num_threads": args.threads}}
    try:
        overrides = parse_set(args.set, overrides)
        base = trace_config(args.trace, episode)
        cfg = EnvConfig.from_dict(base).replace(**overrides)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    print(f"# {_command(argv)}")
    print(f"# {episode.key}: learning.lora.server_step={cfg.learning.lora.server_step}")
    print("round  arrived  data_share  accuracy  recorded  loss")
    try:
        for row in replay_episode(
            episode,
            cfg,
            rounds=args.rounds,
            load_state=args.load_state,
            save_state=args.save_state,
            save_after=args.save_after,
        ):
            print(
                f"{row.round:5d}  {row.arrived:7d}  {row.data_share:10.2f}  {row.accuracy:8.4f}  "
                f"{row.recorded_accuracy:8.4f}  {row.loss:.3f}",
                flush=True,
            )
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from fedenv.calibrate.fit import LOSSES

    parser = argparse.ArgumentParser(
        prog="python -m fedenv.calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser(
        "collect", help="record per-round traces of policies on the lora backend (resumable)"
    )
    c.add_argument("--task", default="sst2", choices=["sst2", "qnli"])
    c.add_argument("--backend", default="lora", choices=["lora", "surrogate"])
    c.add_argument(
        "--config",
        default=None,
        help="base config: a preset name or a YAML file (default: switching)",
    )
    c.add_argument("--rounds", type=int, default=None, help="rounds per episode (num_rounds)")
    c.add_argument("--devices", type=int, default=None, help="number of devices K")
    c.add_argument("--local-steps", type=int, default=None, help="local steps tau")
    c.add_argument("--batch-size", type=int, default=None, help="local batch n_b")
    c.add_argument(
        "--eval-samples", type=int, default=None, help="fixed evaluation subset size (lora)"
    )
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads (lora)")
    c.add_argument(
        "--calibration",
        default=None,
        help="calibration YAML whose surrogate constants the config (and model-based policies) use",
    )
    c.add_argument(
        "--set",
        action="append",
        metavar="KEY.PATH=VALUE",
        help="any config override, e.g. learning.lora.learning_rate=0.001",
    )
    c.add_argument(
        "--policies", nargs="+", default=DEFAULT_POLICIES, help="policy specs name[:key=value,...]"
    )
    c.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    c.add_argument(
        "--out",
        default=None,
        help="trace file (default results/calibration/<task>_<backend>.jsonl)",
    )
    c.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "pack",
        help="copy the complete episodes of trace files, gzip-compressed, into a directory (to "
        "commit them)",
    )
    p.add_argument("traces", nargs="+", help="trace files (.jsonl)")
    p.add_argument(
        "--into",
        required=True,
        help="directory to write <name>.jsonl.gz (and <name>.config.yaml) into",
    )

    f = sub.add_parser(
        "fit", help="fit the surrogate's constants to traces; write a calibration YAML"
    )
    f.add_argument("--traces", nargs="+", required=True, help="trace files or directories")
    f.add_argument("--backend", default="lora", help="use only episodes of this backend ('' = all)")
    f.add_argument(
        "--heldout-seeds",
        nargs="*",
        type=int,
        default=None,
        help="seeds kept out of the fit (default: the last third)",
    )
    f.add_argument("--objective", default="both", choices=["one_step", "rollout", "both"])
    f.add_argument(
        "--parameters",
        nargs="+",
        default=None,
        help="constants to fit (default: every identifiable one)",
    )
    f.add_argument(
        "--base",
        default=None,
        help="YAML whose surrogate constants start the fit (default: SurrogateConfig())",
    )
    f.add_argument("--starts", type=int, default=6, help="random restarts")
    f.add_argument(
        "--loss",
        default="linear",
        choices=list(LOSSES),
        help="residual loss of the least squares (robust: soft_l1, huber, cauchy)",
    )
    f.add_argument(
        "--f-scale",
        type=float,
        default=0.02,
        help="accuracy error (fraction) beyond which a robust loss grows slower than the square",
    )
    f.add_argument("--out", default=None, help="calibration YAML to write")

    r = sub.add_parser(
        "report", help="measure a calibration against held-out traces; update docs/fidelity.md"
    )
    r.add_argument("--traces", nargs="+", required=True)
    r.add_argument("--backend", default="lora", help="use only episodes of this backend ('' = all)")
    r.add_argument("--calibration", required=True, help="calibration YAML")
    r.add_argument("--heldout-seeds", nargs="*", type=int, default=None)
    r.add_argument(
        "--policies",
        nargs="+",
        default=None,
        help="policies to rank (default: all on every held-out seed)",
    )
    r.add_argument(
        "--window", type=int, default=5, help="last rounds averaged for the less noisy summary"
    )
    r.add_argument(
        "--out",
        default=None,
        help="Markdown file whose generated block to replace (e.g. docs/fidelity.md)",
    )
    r.add_argument("--block", default=None, help="name of the generated block (default: the task)")
    r.add_argument("--json", default=None, help="also write the figures as JSON here")

    i = sub.add_parser(
        "inventory",
        help="list the complete episodes of trace files (policy, seeds, rounds, wall time, "
        "machine)",
    )
    i.add_argument("--traces", nargs="+", required=True, help="trace files or directories")
    i.add_argument(
        "--out",
        default=None,
        help="Markdown file whose generated block to replace (e.g. docs/fidelity.md)",
    )
    i.add_argument("--block", default="inventory", help="name of the generated block")

    y = sub.add_parser(
        "replay",
        help="train a recorded episode's decisions again on the lora backend, with other learner "
        "settings (--set)",
    )
    y.add_argument("trace", help="trace file (.jsonl or .jsonl.gz)")
    y.add_argument("--policy", required=True, help="the episode's policy spec, as recorded")
    y.add_argument(
        "--seed", type=int, default=None, help="the episode's seed (if the file has several)"
    )
    y.add_argument("--rounds", type=int, default=None, help="replay up to this round")
    y.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    y.add_argument(
        "--set",
        action="append",
        metavar="KEY.PATH=VALUE",
        help="learner settings to change, e.g. learning.lora.server_step=full",
    )
    y.add_argument("--save-state", default=None, help="write the learner's state here ...")
    y.add_argument("--save-after", type=int, default=None, help="... after this round")
    y.add_argument(
        "--load-state", default=None, help="continue from a state written by --save-state"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    {
        "collect": cmd_collect,
        "pack": cmd_pack,
        "fit": cmd_fit,
        "report": cmd_report,
        "inventory": cmd_inventory,
        "replay": cmd_replay,
    }[args.command](args, argv)


if __name__ == "__main__":
    from fedenv.cli import run_command

    run_command(main)
