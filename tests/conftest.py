import glob
import os
import re
import subprocess

import pytest

from pu_diffusion.testing_utils import write_imagefolder, write_unet_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def reset_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture
def tiny_unet_config(tmp_path):
    """A function: channels → folder holding a tiny UNet2DModel config.json."""
    return lambda channels=1: write_unet_config(tmp_path / f"tiny_unet_{channels}", channels)


@pytest.fixture
def imagefolder(tmp_path):
    return write_imagefolder(tmp_path / "data")


def tiny_args(output_dir, unet_config, *extra, unfiltered=True):
    """Flags of a fast built-in MNIST run on a tiny UNet at 8×8; ``unfiltered``: without the U filter and with β 0.1
    given, where --method pu's defaults would score U with CNNs first (the filter's and --beta auto's own tests run
    them; flags in ``extra`` come last, so they win)."""
    return [
        "--output_dir",
        str(output_dir),
        "--model_config_name_or_path",
        unet_config,
        "--resolution",
        "8",
        "--train_batch_size",
        "8",
        "--sensitive_batch_size",
        "4",
        "--max_train_steps",
        "6",
        "--checkpointing_steps",
        "3",
        "--validation_steps",
        "0",
        "--num_inference_steps",
        "4",
        "--num_final_images",
        "4",
        "--seed",
        "0",
        "--report_to",
        "none",
        "--lr_warmup_steps",
        "2",
        *(["--pu_filter_unlabeled", "0", "--beta", "0.1"] if unfiltered else []),
        *extra,
    ]


def record_pu_risk_betas(monkeypatch) -> list:
    """Wrap ``pu_diffusion.losses.pu_risk`` (what every PURisk calls) to record the β of every call; returns the
    (growing) list."""
    import pu_diffusion.losses as losses

    seen, real_pu_risk = [], losses.pu_risk

    def spy(loss, is_sensitive, method="pu", beta=0.1, *args, **kwargs):
        seen.append(beta)
        return real_pu_risk(loss, is_sensitive, method, beta, *args, **kwargs)

    monkeypatch.setattr(losses, "pu_risk", spy)
    return seen


def doc_commands(script_name: str) -> list[tuple[str, list[str]]]:
    """Every ``python benchmarks/<script_name> …`` command of README.md and docs/*.md, as bash expands it (its
    ``B="python …"`` variables and ``\\`` continuations included): (file, argv after the script). A command whose
    line's comment says ``new runs`` trains what is not measured yet and is left out."""
    commands = []
    for path in [
        os.path.join(ROOT, "README.md"),
        *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))),
    ]:
        with open(path) as handle:
            blocks = re.findall(r"```bash\n(.*?)```", handle.read(), re.S)
        for block in blocks:
            lines = [
                line for line in block.replace("\\\n", " ").splitlines() if "new runs" not in line.partition("#")[2]
            ]
            kept = [line for line in lines if re.match(r"\s*([A-Z]+=\"|\$[A-Z]|python )", line)]  # no pip, no cd
            if not any(script_name in line for line in kept):
                continue
            echo = 'python() { local a; for a in "$@"; do printf "%s\\x1f" "$a"; done; printf "\\n"; }\n'
            # No PATH: nothing but the echo and assignments can run (a `B="python3 …"` then `$B` fails loudly, as
            # does an undefined variable under -u, instead of a line silently expanding to nothing).
            shell = ["env", "-i", "PATH=/nonexistent", "/bin/bash", "--norc", "--noprofile", "-euc"]
            out = subprocess.run([*shell, echo + "\n".join(kept)], capture_output=True, text=True, check=True)
            for line in out.stdout.splitlines():
                argv = line.split("\x1f")[:-1]
                if argv and os.path.basename(argv[0]) == script_name:
                    commands.append((os.path.relpath(path, ROOT), argv[1:]))
    return commands
