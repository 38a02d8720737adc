"""What every benchmark shares: JSON records (atomic writes), mean ± std cells, the paired t-test, and one way to
run a training: the real training script in its own process, which writes its stats to ``train_stats.json``.

The benchmarks import it as ``harness`` (Python puts the running script's folder, benchmarks/, first on the path;
pytest.ini adds benchmarks/ for the tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from pu_diffusion.outputs import write_json_atomic
from pu_diffusion.tracking import sensitive_band_summary
from pu_diffusion.training import TRAIN_STATS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_json(path: str):
    with open(path) as handle:
        return json.load(handle)


def write_json(path: str, data) -> None:
    """Atomic (a kill leaves the old file or the new one, never half of one); creates the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(path, data, default=float)


def written_by(path: str, marker: str) -> bool:
    """Whether the JSON at ``path`` carries ``{"written_by": marker}``: a program replaces only its own output."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("written_by") == marker


def mean_std(values, digits: int = 3) -> str:
    """'m ± s' (sample std) of ``values``; the value alone for one; '' for none."""
    values = [float(value) for value in values]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def t_interval(values, level: float = 0.95) -> list[float] | None:
    """The t-interval of the mean over seeds: it holds the seed-to-seed spread (training noise and, where the split
    varies with the seed, the data draw), which a Wilson interval over pooled samples leaves out. None for < 2."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return [float(values.mean() - half), float(values.mean() + half)]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table: the header, its separator, then one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def paired_p(ours, theirs) -> float | None:
    """Two-sided paired t-test p-value over seeds; None with fewer than two pairs or differences that do not vary
    (t = ±inf or undefined there: no p-value rather than a '0')."""
    from scipy import stats

    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    if len(ours) < 2 or np.ptp(ours - theirs) == 0:
        return None
    return float(stats.ttest_rel(ours, theirs).pvalue)


def run_training(script: str, argv: list[str], log_path: str, env: dict | None = None) -> dict:
    """``python <script> <argv>`` in its own process, as a user runs it; returns the run's train_stats.json plus
    the process's peak resident memory (``peak_rss_mb``). Its output goes to ``log_path``, which is kept only when
    the run fails (the error raised quotes its tail)."""
    output_dir = argv[argv.index("--output_dir") + 1]
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, script), *argv], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage: its peak memory alone
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        with open(log_path) as handle:
            tail = handle.read()[-3000:]
        raise RuntimeError(f"{script} failed (exit {process.returncode}); log {log_path}:\n{tail}")
    os.remove(log_path)
    stats = read_json(os.path.join(output_dir, TRAIN_STATS))
    stats["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return stats


def trained_beta(run_dir: str) -> dict | None:
    """The β a PU run trained with and where it came from (``--beta auto``: the estimate, its interval and AUC),
    from the run's pu_run.json; None for methods that use no β."""
    path = os.path.join(run_dir, "pu_run.json")
    if not os.path.isfile(path):
        return None
    run = read_json(path)
    if run.get("method") != "pu":
        return None
    return run.get("beta_resolved") or {"beta": float(run["beta"]), "beta_source": "given with --beta"}


def training_log_summary(run_dir: str) -> dict | None:
    """The run's risk terms over training (logs/train_log.jsonl): the means of L_U⁻, L_S⁻ and of the negative
    risk L_U⁻ − βL_S⁻ over the first and the last tenth of the steps, and the share of steps where that negative
    risk was below zero (where absPU's |·| turns round and pushes U's loss up), and the number of steps where nnPU
    took its negative branch (``nn_branch_steps``), and how live ℓ⁺ was on S per timestep band
    (``sensitive_term_by_band``, where the run logged it). None when the run logged no PU terms."""
    path = os.path.join(run_dir, "logs", "train_log.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        logs = [json.loads(line) for line in handle if line.strip()]
    logs = [entry for entry in logs if "neg_risk" in entry]
    if not logs:
        return None
    tenth = max(1, len(logs) // 10)
    summary = {
        "steps": len(logs),
        "share_negative_risk_below_zero": sum(e["neg_risk"] < 0 for e in logs) / len(logs),
        "nn_branch_steps": int(sum(e.get("nn_branch", 0) for e in logs)),
    }
    for window, part in (("first_tenth", logs[:tenth]), ("last_tenth", logs[-tenth:])):
        for key in ("L_U-", "L_S-", "neg_risk"):
            summary[f"{key} {window}"] = float(np.mean([entry[key] for entry in part]))
    bands = sensitive_band_summary(logs)
    if bands is not None:
        summary["sensitive_term_by_band"] = bands
    return summary
