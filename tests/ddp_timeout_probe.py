"""Run by test_reliability under `accelerate launch` with two processes: rank 1 never reaches the barrier, rank 0
reports how long the process group waited for it (``setup_accelerator`` sets that wait from --ddp_timeout)."""

import argparse
import os
import sys
import time

from pu_diffusion.training import setup_accelerator

output_dir, ddp_timeout = sys.argv[1], int(sys.argv[2])
args = argparse.Namespace(
    output_dir=output_dir,
    logging_dir="logs",
    gradient_accumulation_steps=1,
    mixed_precision="no",
    report_to="none",
    ddp_timeout=ddp_timeout,
    seed=None,
    allow_tf32=False,
)
accelerator = setup_accelerator(args)
if accelerator.process_index == 1:
    time.sleep(120)  # far past the timeout: the launcher stops this rank once rank 0 fails
    sys.exit(0)
start = time.time()
try:
    accelerator.wait_for_everyone()
    print(f"barrier passed after {time.time() - start:.1f} s", flush=True)
except RuntimeError:
    print(f"barrier timed out after {time.time() - start:.1f} s", flush=True)
    os._exit(3)
