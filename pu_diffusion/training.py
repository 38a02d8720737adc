"""The training skeleton both scripts share: accelerator, U/S data, step plan, resume, epochs, after-step work.

A script reads top to bottom as

    accelerator = setup_accelerator(args)
    resume_path = check_run(accelerator, args)                       # refusals happen here and before writing
    dataset, unlabeled_rows, sensitive_rows = load_pu_data(args, ...)
    ... model, loader = make_train_dataloader(...), optimizer = make_optimizer(...)
    plan = plan_training(accelerator, train_dataloader, args)        # from the prepared loader; 0 steps refused
    start_run(accelerator, args, resume_path)                        # the first write: pu_run.json
    progress = TrainingProgress(accelerator, args, plan, resume(accelerator, resume_path, args))
    for batch in iterate_batches(accelerator, train_dataloader, batch_sampler, plan, progress.global_step):
        with accelerator.accumulate(unet):
            terms = compute_loss(...)                                # the one script-specific part
            ...
        if accelerator.sync_gradients:
            progress.after_step(terms, lr_scheduler)                 # EMA, logs, progress bar, checkpoint
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import timedelta

import diffusers
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from .batch_sampler import PUBatchSampler
from .beta import given_beta, resolve_auto_beta, resolve_filtered_beta
from .checkpoints import checkpoint_num_processes, checkpoint_step, resolve_resume_checkpoint, save_checkpoint
from .cli import TrainingDivergedError, UsageError
from .image_data import check_images_readable, load_image_dataset, pu_indices
from .losses import PURisk
from .outputs import write_json_atomic
from .run_dir import RUN_FILE, check_output_dir, claim_outputs, public_config, read_run_file, start_run_dir
from .tracking import make_trackers, progress_postfix, remove_log, step_logs, truncate_log

logger = get_logger(__name__, log_level="INFO")


def setup_accelerator(args) -> Accelerator:
    """The Accelerator (gradient accumulation, mixed precision, trackers), logging, threads and seeds."""
    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=make_trackers(args.report_to, logging_dir),
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir),
        # The other processes wait while the main one estimates β, saves, samples and pushes.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))],
    )
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.num_processes == 1 and accelerator.device.type == "cpu" and torch.get_num_threads() == 1:
        # `accelerate launch` sets OMP_NUM_THREADS=1 for every process; one process may use every core.
        torch.set_num_threads(os.cpu_count() or 1)
    if accelerator.is_local_main_process:
        diffusers.utils.logging.set_verbosity_info()
    else:
        diffusers.utils.logging.set_verbosity_error()
    if args.seed is not None:
        set_seed(args.seed, device_specific=True)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    return accelerator


def check_run(accelerator, args, outputs=()) -> str | None:
    """Refuse an output dir that cannot take this run; return the checkpoint to resume from (or None).

    ``--resume_from_checkpoint latest`` without a complete checkpoint resumes *the same run* from step 0 only
    when the folder's pu_run.json matches; a folder holding anything else is refused as if not resuming.
    """
    resume_path = resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
    resuming = resume_path is not None or (
        bool(args.resume_from_checkpoint) and os.path.exists(os.path.join(args.output_dir, RUN_FILE))
    )
    check_output_dir(
        args.output_dir,
        public_config(args),
        resuming=resuming,
        overwrite=args.overwrite_output_dir,
        logging_dir=args.logging_dir,
        outputs=outputs,
    )
    if args.method == "erasediff" and args.erasediff_lambda < 0 and accelerator.num_processes > 1:
        raise UsageError(
            f"--erasediff_lambda {args.erasediff_lambda} (adaptive λ) takes both gradients with torch.autograd.grad, "
            f"which DistributedDataParallel does not support; this run has {accelerator.num_processes} processes. "
            "Use a fixed --erasediff_lambda >= 0, or one process."
        )
    if resume_path is not None and checkpoint_num_processes(resume_path) != accelerator.num_processes:
        raise UsageError(
            f"--resume_from_checkpoint {resume_path!r} was written by {checkpoint_num_processes(resume_path)} "
            f"process(es), this run has {accelerator.num_processes}: the batch order and random states are per "
            "process, so resume with the same number of processes."
        )
    accelerator.wait_for_everyone()  # every process has checked before the main one writes anything
    return resume_path


def resolve_beta(accelerator, args, resume_path: str | None, load_images) -> dict:
    """β for the PU risk and where it came from: {"beta", "beta_source", "beta_estimate"} (see :mod:`.beta`).

    ``--beta`` as given; with ``--beta auto`` a resumed run reads the β it recorded in pu_run.json, and a new run
    estimates it from ``load_images()`` (→ U and S tensors) with --beta_estimator, --beta_auto_point and
    --beta_margin. With --pu_filter_unlabeled (train_pu_diffusion.py), also the U images to drop and the β left
    (:func:`.beta.resolve_filtered_beta`).
    """
    recorded = None
    if resume_path is not None and os.path.exists(os.path.join(args.output_dir, RUN_FILE)):
        recorded = read_run_file(args.output_dir).get("beta_resolved")
    if getattr(args, "pu_filter_unlabeled", 0) and args.method == "pu":
        return resolve_filtered_beta(
            accelerator,
            load_images,
            given=None if args.beta == "auto" else args.beta,
            factor=args.pu_filter_unlabeled,
            estimator=args.beta_estimator,
            margin=args.beta_margin,
            point=args.beta_auto_point,
            ddp_timeout=args.ddp_timeout,
            recorded=recorded,
            repeats=args.beta_score_repeats,
            patience=args.beta_score_patience,
            untrusted=args.pu_filter_untrusted_beta,
            min_beta=args.pu_filter_min_beta,
        )
    if args.beta != "auto":
        return given_beta(args.beta)
    return resolve_auto_beta(
        accelerator,
        load_images,
        estimator=args.beta_estimator,
        margin=args.beta_margin,
        point=args.beta_auto_point,
        ddp_timeout=args.ddp_timeout,
        recorded=recorded,
        repeats=args.beta_score_repeats,
        patience=args.beta_score_patience,
    )


TRAIN_STATS = "train_stats.json"  # the finished run's steps, seconds, steps/s (and CUDA peak memory), for scripts


def write_train_stats(output_dir: str, stats: dict) -> None:
    """Record the finished run's stats in --output_dir/train_stats.json (main process)."""
    claim_outputs(output_dir, [TRAIN_STATS])
    write_json_atomic(os.path.join(output_dir, TRAIN_STATS), stats)


def end_training(accelerator) -> None:
    """Stop the trackers and tear the process group down, every process together.

    A rank that destroys the group while the main one is still saving can leave the main one hanging at exit
    (gloo, seen once in the two-process test); the wait is bounded by --ddp_timeout.
    """
    accelerator.wait_for_everyone()
    accelerator.end_training()


def start_run(
    accelerator, args, resume_path: str | None, plan: TrainingPlan, project_name: str, derived: dict | None = None
) -> None:
    """The run's first write: create the output dir, record the flags, start the trackers (main process).

    ``--overwrite_output_dir`` removes the old run's outputs first; so does ``--resume_from_checkpoint latest``
    when no checkpoint exists yet (the same run then starts afresh). ``derived`` (what the run derived from its
    flags, e.g. ``{"beta_resolved": ...}``) is recorded beside the flags.
    """
    if accelerator.is_main_process:
        run_file_exists = os.path.exists(os.path.join(args.output_dir, RUN_FILE))
        resume_from_zero = bool(args.resume_from_checkpoint) and run_file_exists
        fresh_start = resume_path is None and (args.overwrite_output_dir or resume_from_zero)
        if args.resume_from_checkpoint and resume_path is None:
            logger.info(f"No complete checkpoint in {args.output_dir}: starting the run from step 0.")
        start_run_dir(
            args.output_dir,
            {**public_config(args), **(derived or {})},
            overwrite=fresh_start,
            logging_dir=args.logging_dir,
        )
        logging_dir = os.path.join(args.output_dir, args.logging_dir)
        if resume_path is not None:  # steps after the checkpoint are trained, and logged, again
            truncate_log(logging_dir, checkpoint_step(resume_path))
        else:  # step 0: no earlier log survives (also with a --logging_dir outside --output_dir)
            remove_log(logging_dir)
        config = {**public_config(args), **plan.__dict__}
        # tensorboard's hparams take scalars and strings only (lists such as --validation_prompts raise)
        accelerator.init_trackers(
            project_name,
            config={key: str(value) if isinstance(value, list) else value for key, value in config.items()},
        )
    accelerator.wait_for_everyone()


def load_pu_data(args, require_sensitive: bool):
    """(dataset, U row indices, S row indices) of --dataset_name / --train_data_dir, images checked unless skipped."""
    dataset = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_data_dir, args.cache_dir)
    unlabeled_rows, sensitive_rows = pu_indices(
        dataset, args.image_column, args.pu_label_column, args.sensitive_label, require_sensitive=require_sensitive
    )
    if not args.skip_image_check:
        check_images_readable(dataset, args.image_column)
    return dataset, unlabeled_rows, sensitive_rows


def sensitive_batch_size(args) -> int:
    """S samples per batch: --sensitive_batch_size, or none for --method unsupervised (it never reads S)."""
    return 0 if args.method == "unsupervised" else args.sensitive_batch_size


def make_train_dataloader(args, dataset, unlabeled_rows, sensitive_rows, collate_fn):
    """(DataLoader, its PUBatchSampler): --train_batch_size U rows and --sensitive_batch_size S rows per batch."""
    seed = args.seed if args.seed is not None else 0
    batch_sampler = PUBatchSampler(
        unlabeled_rows, sensitive_rows, args.train_batch_size, sensitive_batch_size(args), seed=seed
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
        # Its own generator: creating an iterator must not draw from the global RNG that noise comes from,
        # or a resumed run (which creates its iterator after load_state) would see other noise.
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, batch_sampler


def make_optimizer(args, parameters, num_processes: int):
    """AdamW (or bitsandbytes' 8-bit AdamW) over ``parameters``; --scale_lr scales by the global batch."""
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * num_processes
    optimizer_cls = torch.optim.AdamW
    if args.use_8bit_adam:
        import bitsandbytes

        optimizer_cls = bitsandbytes.optim.AdamW8bit
    return optimizer_cls(
        parameters,
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def sensitive_cap(args, beta: float) -> float | None:
    """κ of the S-loss cap: --pu_sensitive_cap, --pu_sensitive_cap_fraction ρ / the resolved β (ρ has no cap at
    β 0, where nothing is pushed), or the smaller of the two when both are given."""
    caps = [args.pu_sensitive_cap]
    if args.pu_sensitive_cap_fraction is not None and beta > 0:
        caps.append(args.pu_sensitive_cap_fraction / beta)
    caps = [cap for cap in caps if cap is not None]
    return min(caps) if caps else None


def make_risk(accelerator, args, beta: float, num_train_timesteps: int | None = None) -> PURisk:
    """The run's PURisk from the PU flags and the resolved ``beta``; nnPU's branch is averaged over processes.
    With ``num_train_timesteps`` every step also logs ℓ⁺ on S per timestep band (a diagnostic)."""
    kappa = sensitive_cap(args, beta)
    if args.pu_sensitive_cap_fraction is not None:  # validation allows it with --method pu only
        logger.info(f"--pu_sensitive_cap_fraction {args.pu_sensitive_cap_fraction} at β {beta}: κ = {kappa}")
    return PURisk(
        method=args.method,
        beta=beta,
        estimator=args.pu_estimator,
        supervised_form=args.supervised_form,
        temperature=args.loss_temperature,
        sensitive_cap=kappa,
        nn_gamma=getattr(args, "pu_nn_gamma", 1.0),
        sensitive_cap_reference=getattr(args, "pu_sensitive_cap_reference", "batch"),
        min_timestep=getattr(args, "pu_min_timestep", 0),  # an unconditional-script flag
        reduce_for_branch=lambda value: accelerator.reduce(value, reduction="mean"),
        num_train_timesteps=num_train_timesteps,
    )


def make_ema(args, model, model_cls):
    """An EMAModel of ``model``'s parameters (--use_ema), or None."""
    if not args.use_ema:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(
        model.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        model_cls=model_cls,
        model_config=model.config,
    )


@dataclass(frozen=True)
class TrainingPlan:
    """How many optimization steps an epoch (one pass over U) gives, and how many epochs reach the target."""

    batches_per_epoch: int  # per process, after accelerate shards the batches
    gradient_accumulation_steps: int
    updates_per_epoch: int
    num_epochs: int
    max_train_steps: int


def plan_training(accelerator, train_dataloader, args) -> TrainingPlan:
    """The step plan, from the *prepared* loader (accelerate drops the uneven tail of batches across processes).

    Refuses a plan with no step at all (e.g. U smaller than one batch per process).
    """
    batches = len(train_dataloader)
    if batches == 0:
        total = (
            len(train_dataloader.batch_sampler.batch_sampler)
            if hasattr(train_dataloader.batch_sampler, "batch_sampler")
            else 0
        )
        raise UsageError(
            f"No training step fits: U gives {total} batch(es) of --train_batch_size {args.train_batch_size} per "
            f"epoch, fewer than the {accelerator.num_processes} processes that each need one. Lower "
            "--train_batch_size, add unlabeled images, or use fewer processes."
        )
    updates_per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    return TrainingPlan(
        batches_per_epoch=batches,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        updates_per_epoch=updates_per_epoch,
        num_epochs=math.ceil(max_train_steps / updates_per_epoch),
        max_train_steps=max_train_steps,
    )


def prepare_for_training(accelerator, args, model, parameters, train_dataloader, ema_model=None):
    """AdamW over ``parameters``, everything through ``accelerator.prepare``, the step plan and the LR schedule.

    Returns (model, optimizer, train_dataloader, lr_scheduler, plan); the plan comes from the prepared loader.
    """
    optimizer = make_optimizer(args, parameters, accelerator.num_processes)
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    plan = plan_training(accelerator, train_dataloader, args)
    lr_scheduler = accelerator.prepare(make_lr_scheduler(args, optimizer, plan, accelerator.num_processes))
    if ema_model is not None:
        ema_model.to(accelerator.device)
    return model, optimizer, train_dataloader, lr_scheduler, plan


def make_lr_scheduler(args, optimizer, plan: TrainingPlan, num_processes: int):
    """diffusers' get_scheduler; accelerate steps a prepared scheduler once per process, hence the scaling."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * num_processes,
        num_training_steps=plan.max_train_steps * num_processes,
    )


def resume(accelerator, resume_path: str | None, args) -> int:
    """Load the checkpoint's state (model, EMA, optimizer, scheduler, RNG) and return its step; 0 without one."""
    if resume_path is None:
        return 0
    accelerator.print(f"Resuming from {resume_path}")
    try:
        accelerator.load_state(resume_path)
    except Exception as error:  # noqa: BLE001 - torch, safetensors and pickle raise many types for a damaged file
        raise UsageError(
            f"--resume_from_checkpoint: {resume_path!r} cannot be loaded ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:120] if str(error) else 'no message'}). Pass another checkpoint-N, or "
            "start over with --overwrite_output_dir."
        ) from error
    return checkpoint_step(resume_path)


def iterate_batches(accelerator, train_dataloader, batch_sampler, plan: TrainingPlan, first_step: int):
    """Yield the batches from optimization step ``first_step`` on, epoch after epoch (exact after a resume)."""
    if first_step >= plan.max_train_steps:  # resumed at or past the target: nothing left to train
        return
    first_epoch, done_in_epoch = divmod(first_step, plan.updates_per_epoch)
    skip = done_in_epoch * plan.gradient_accumulation_steps
    for epoch in range(first_epoch, plan.num_epochs):
        loader = train_dataloader
        if epoch == first_epoch and skip:
            loader = accelerator.skip_first_batches(train_dataloader, skip)
        # accelerate's loaders pass their own epoch counter to the sampler when iterated; after a resume that
        # counter starts at 0, so set it (and the sampler's, which a sharded loader does not reach) to the epoch.
        loader.set_epoch(epoch)
        batch_sampler.set_epoch(epoch)
        yield from loader


class TrainingProgress:
    """After every optimization step: EMA update, step count, logs (reduced over processes), bar, checkpoint."""

    def __init__(self, accelerator, args, plan: TrainingPlan, global_step: int, ema_model=None, model=None):
        self.accelerator, self.args, self.plan = accelerator, args, plan
        self.ema_model, self.model = ema_model, model
        self.global_step = self.start_step = global_step
        self.start_time = time.time()
        self.progress_bar = tqdm(
            range(plan.max_train_steps),
            initial=global_step,
            desc="Steps",
            disable=not accelerator.is_local_main_process,
        )

    def after_step(self, terms, lr_scheduler) -> None:
        if self.ema_model is not None:
            self.ema_model.step(self.model.parameters())
        self.global_step += 1
        self.progress_bar.update(1)
        logs = step_logs(self.accelerator, terms, lr_scheduler, self.ema_model)
        self.progress_bar.set_postfix(**progress_postfix(logs))
        self.accelerator.log(logs, step=self.global_step)
        if self.global_step % self.args.checkpointing_steps == 0:
            path = save_checkpoint(
                self.accelerator, self.args.output_dir, self.global_step, self.args.checkpoints_total_limit
            )
            logger.info(f"Saved state to {path}")

    def validation_due(self) -> bool:
        """Whether a validation grid is due now (main process; not at the last step, the final grid covers it)."""
        every = self.args.validation_steps
        return bool(
            self.accelerator.is_main_process
            and every
            and self.args.num_validation_images
            and self.global_step % every == 0
            and self.global_step < self.plan.max_train_steps
        )

    @property
    def done(self) -> bool:
        return self.global_step >= self.plan.max_train_steps

    def stats(self) -> dict:
        seconds = time.time() - self.start_time
        steps = self.global_step - self.start_step
        return {
            "global_step": self.global_step,
            "train_seconds": round(seconds, 1),
            "steps_per_second": round(steps / max(seconds, 1e-9), 3),
            **(
                {"max_memory_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
                if torch.cuda.is_available()
                else {}
            ),
        }


def check_finite_weights(accelerator, model, ema_model, global_step: int) -> None:
    """Refuse to save a model whose weights (or EMA weights) hold NaN or inf: training diverged."""
    tensors = list(accelerator.unwrap_model(model).parameters())
    if ema_model is not None:
        tensors += list(ema_model.shadow_params)
    bad = sum(not bool(torch.isfinite(tensor).all()) for tensor in tensors)
    if bad:
        raise TrainingDivergedError(
            f"training diverged: {bad} of {len(tensors)} weight tensors hold NaN or inf after step {global_step}, so "
            "no pipeline was saved. Lower --learning_rate (or clip with --max_grad_norm), then resume from an "
            "earlier checkpoint-N or start over with --overwrite_output_dir."
        )


def model_to_save(accelerator, model, ema_model=None):
    """The unwrapped model, holding the EMA weights when --use_ema."""
    model = accelerator.unwrap_model(model)
    if ema_model is not None:
        ema_model.copy_to(model.parameters())
    return model


def log_run_header(accelerator, args, plan: TrainingPlan, data_info: dict, beta: float) -> None:
    per_device_sensitive = sensitive_batch_size(args)
    total = (
        (args.train_batch_size + per_device_sensitive) * accelerator.num_processes * args.gradient_accumulation_steps
    )
    logger.info("***** Running PU training *****")
    logger.info(f"  Data = {data_info}")
    logger.info(
        f"  Method = {args.method}"
        + (f", beta = {beta}, estimator = {args.pu_estimator}" if args.method == "pu" else "")
    )
    logger.info(f"  Batch per device = {args.train_batch_size} U + {per_device_sensitive} S; total = {total}")
    logger.info(f"  Num epochs (passes over U) = {plan.num_epochs}, optimization steps = {plan.max_train_steps}")
