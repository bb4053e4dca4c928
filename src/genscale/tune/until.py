"""`genscale train CONFIG --until-pass`: train, evaluate, gate; on FAIL tune within the remaining budget and take
the best configuration, until one passes, the FLOP budget is spent or the rounds run out.

Round 1 is the config as given. Each later round adds trials to one Optuna study (so the sampler learns from every
earlier round, and round 1's run is its trial 0); the round's result is the study's best trial by the objective
(the validation metric curve), judged by its own gate (the test split). A trial is an ordinary full run with the
config's seed, so the best configuration's run is that trial's run: training it again would repeat its weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from genscale.config import RunConfig
from genscale.errors import GenscaleError
from genscale.paths import read_json, write_json
from genscale.ui import console

EXIT_PASSED, EXIT_ERROR, EXIT_BUDGET_SPENT, EXIT_ROUNDS_SPENT = 0, 1, 3, 4  # the exit statuses of --until-pass


@dataclass
class UntilPass:
    """How a train-until-pass ended: "passed", "budget" (spent) or "rounds" (none left), and every round."""

    outcome: Literal["passed", "budget", "rounds"]
    run_dir: Path  # the run the loop ends with: the passing one, else the best by the objective
    rounds: list[dict[str, Any]] = field(default_factory=list)
    tune_dir: Path | None = None
    spent_flops: float = 0.0
    budget_flops: float | None = None

    @property
    def exit_code(self) -> int:
        return {"passed": EXIT_PASSED, "budget": EXIT_BUDGET_SPENT, "rounds": EXIT_ROUNDS_SPENT}[self.outcome]


def _run_result(run_dir: Path) -> dict[str, Any]:
    from genscale.pipeline import tracked_run_id

    gate = read_json(run_dir / "gate.json", "gate verdict")
    curve = read_json(run_dir / "curve.json", "metric curve")
    return {"run_id": tracked_run_id(run_dir), "run_dir": str(run_dir), "gate": gate["verdict"],
            "reasons": gate["reasons"], "metric": curve["metric"], "value": curve["points"][-1][1],
            "flops": float(read_json(run_dir / "summary.json", "run summary")["flops"])}


def _add_first_run(tune_dir: Path, cfg: RunConfig, space: dict[str, Any], run_dir: Path, result: dict[str, Any]
                   ) -> bool:
    """Round 1's run as the study's finished trial 0 (when the space holds its values): the sampler learns from it
    and the pruner compares with its curve. False when the space cannot hold it."""
    import optuna

    from genscale.tune.search import load_study, read_plan
    from genscale.tune.space import contains, distributions, value_of

    values = {k: value_of(cfg, k) for k in space}
    if not all(contains(p, values[k]) for k, p in space.items()):
        return False
    curve = read_json(run_dir / "curve.json", "metric curve")
    study = load_study(read_plan(tune_dir))
    study.add_trial(optuna.trial.create_trial(
        params=values, distributions=distributions(space), value=result["value"],
        intermediate_values={int(s): v for s, v in curve["points"]},
        user_attrs={"run_dir": str(run_dir), "tune_dir": str(tune_dir), "run_id": result["run_id"],
                    "flops": result["flops"], "metric": curve["metric"], "budget": curve["budget"],
                    "gate": result["gate"], "worker": "round 1"}))
    return True


def train_until_pass(cfg: RunConfig, *, space_path: str | None = None, max_rounds: int = 3,
                     budget_flops: float | None = None, trials_per_round: int = 8, workers: int = 1,
                     sampler: str = "tpe", pruner: str = "median", startup_trials: int = 5, seed: int = 0
                     ) -> UntilPass:
    """Train `cfg`; while its gate fails, tune (a round of `trials_per_round` trials, within what is left of
    `budget_flops` training FLOPs) and judge the best configuration's run, for at most `max_rounds` rounds."""
    from genscale.pipeline import train
    from genscale.tune.search import create_tune, load_study, read_plan, run_tune, update_plan, with_curve
    from genscale.tune.space import load_space

    if not cfg.gate.thresholds or not cfg.eval.on_train_end:
        raise GenscaleError("--until-pass: the config needs a gate (e.g. gate: {val_loss: {max: 2.0}}) and "
                            "eval.on_train_end: true; the loop trains until the gate passes")
    if max_rounds < 1 or trials_per_round < 1 or (budget_flops is not None and budget_flops <= 0):
        raise GenscaleError(f"--max-rounds {max_rounds} / --trials {trials_per_round} / --budget-flops "
                            f"{budget_flops}: rounds and trials >= 1, a budget > 0")
    cfg = with_curve(cfg)
    space = load_space(space_path, cfg)  # a bad space fails before anything trains
    console.print(f"until-pass: round 1 of at most {max_rounds}: the config as given", highlight=False)
    first_dir = train(cfg)
    first = _run_result(first_dir)
    result = UntilPass("passed", first_dir, [{"round": 1, "runs": [first["run_id"]], "best": first,
                                             "spent_flops": first["flops"]}], None, first["flops"], budget_flops)
    if first["gate"] == "PASS":
        return _finish(result)
    tune_dir, outside = None, first["flops"]  # outside: FLOPs the study's trials do not count
    for number in range(2, max_rounds + 1):
        if budget_flops is not None and result.spent_flops + first["flops"] > budget_flops:
            result.outcome = "budget"
            return _finish(result)
        if tune_dir is None:
            tune_dir = create_tune(cfg, space, trials=trials_per_round, sampler=sampler, pruner=pruner, seed=seed,
                                   startup_trials=startup_trials, workers=workers, budget_flops=budget_flops,
                                   trial_flops=first["flops"], first_trial=False, origin="until-pass")
            if _add_first_run(tune_dir, cfg, space, first_dir, first):
                outside = 0.0
                update_plan(tune_dir, trials=trials_per_round + 1)
            elif budget_flops is not None:
                update_plan(tune_dir, budget_flops=budget_flops - first["flops"])
            result.tune_dir = tune_dir
        else:
            update_plan(tune_dir, trials=read_plan(tune_dir)["trials"] + trials_per_round)
        before = len(load_study(read_plan(tune_dir)).get_trials(deepcopy=False))
        console.print(f"until-pass: round {number} of at most {max_rounds}: gate FAIL so far; tuning "
                      f"{trials_per_round} more trials" + (f" within {budget_flops - result.spent_flops:.3g} FLOPs "
                                                           "left" if budget_flops else ""), highlight=False)
        summary = run_tune(tune_dir, workers=workers)
        result.spent_flops = outside + summary["spent_flops"]
        new = [t["run_id"] for t in summary["trials"][before:]]
        best = summary["best"]
        chosen = _run_result(Path(best["run_dir"])) if best else first
        result.rounds.append({"round": number, "runs": new, "best": chosen, "spent_flops": result.spent_flops})
        result.run_dir = Path(chosen["run_dir"])
        if chosen["gate"] == "PASS":
            result.outcome = "passed"
            return _finish(result)
        if not new:  # the budget let no trial start
            result.outcome = "budget"
            return _finish(result)
        result.outcome = "rounds"
    if budget_flops is not None and result.spent_flops + first["flops"] > budget_flops:
        result.outcome = "budget"
    return _finish(result)


OUTCOME_WORDS = {"passed": "gate PASS", "budget": "budget spent without a PASS",
                 "rounds": "rounds spent without a PASS"}


def _finish(result: UntilPass) -> UntilPass:
    """The report of every round: until-pass.json and until-pass.md (in the tuning folder, else the run's)."""
    folder = result.tune_dir or result.run_dir
    record = {"outcome": result.outcome, "exit_code": result.exit_code, "run_dir": str(result.run_dir),
              "spent_flops": result.spent_flops, "budget_flops": result.budget_flops, "rounds": result.rounds,
              "tune_dir": str(result.tune_dir) if result.tune_dir else None}
    write_json(folder / "until-pass.json", record)
    lines = ["# train --until-pass", "", f"Outcome: **{OUTCOME_WORDS[result.outcome]}** (exit status "
             f"{result.exit_code}) after {len(result.rounds)} rounds and {result.spent_flops:.3g} training FLOPs"
             + (f" of a budget of {result.budget_flops:.3g}" if result.budget_flops else "") + ".", "",
             "| round | runs trained | best run | objective | gate | FLOPs so far |", "|---|---|---|---|---|---|"]
    for r in result.rounds:
        b = r["best"]
        lines.append(f"| {r['round']} | {len(r['runs'])} | `{b['run_id']}` | {b['metric']} {b['value']:.4g} | "
                     f"{b['gate']} | {r['spent_flops']:.3g} |")
    lines += ["", f"Final run: `{result.run_dir}`"]
    (folder / "until-pass.md").write_text("\n".join(lines) + "\n")
    for r in result.rounds:
        b = r["best"]
        console.print(f"round {r['round']}: {len(r['runs'])} runs; best {b['run_id'][:8]} {b['metric']} "
                      f"{b['value']:.4g}, gate {b['gate']}; {r['spent_flops']:.3g} FLOPs so far", highlight=False)
    console.print(f"until-pass: {OUTCOME_WORDS[result.outcome]} (exit status {result.exit_code}); run "
                  f"{result.run_dir}; report {folder / 'until-pass.md'}", highlight=False)
    return result
