"""What this project wrote where: a run deletes or overwrites only files that a run of this project wrote.

Every program that writes into a folder first *claims* the names it will write there, in that folder's
``pu_outputs.json`` (the manifest), and only then writes them:

    pu_outputs.json     {"names": ["pu_run.json", "unet", "logs", ...], "patterns": ["checkpoint-\\d+(\\.tmp|\\.old)?"]}

A name is *owned* when the manifest lists it (a claimed folder is owned whole: the run created it), matches a
claimed pattern (a regular expression matching the whole name), or is an owned name + ``.tmp`` (an
interrupted atomic write). Claims happen before writes, so a kill at any moment leaves nothing unowned behind.
Before claiming, a name (or its ``.tmp``) that exists and is not owned is *in the way*: the program is refused
with the list, and nothing is written. ``--overwrite_output_dir`` removes exactly the owned names (and, in the
named sub-folders that hold a manifest of their own, such as an evaluation's ``eval/``, theirs), never anything
else, and never follows a symbolic link.

Output folders must also be writable, and must neither be, contain, nor lie inside an input (a base model, a
data folder, a config file): checked before anything is loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil

from .cli import UsageError

MANIFEST = "pu_outputs.json"
_LISTED = 5  # names shown in a refusal


def write_atomic(path: str, content: str | bytes) -> str:
    """Write ``content`` to ``path`` through ``path.tmp`` and a rename: a kill never leaves a truncated file."""
    text = {} if isinstance(content, bytes) else {"encoding": "utf-8", "newline": ""}
    with open(path + ".tmp", "wb" if isinstance(content, bytes) else "w", **text) as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".tmp", path)
    return path


def write_json_atomic(path: str, value, **dump_options) -> str:
    """``json.dump`` of ``value`` to ``path``, atomically (see :func:`write_atomic`)."""
    return write_atomic(path, json.dumps(value, **{"indent": 2, **dump_options}))


def read_manifest(folder: str) -> dict:
    """The folder's manifest, {"names": [...], "patterns": [...]}; empty when it has none."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return {"names": [], "patterns": []}
    try:
        with open(path) as handle:
            manifest = json.load(handle)
        names, patterns = list(manifest["names"]), list(manifest.get("patterns", []))
        if not all(isinstance(entry, str) for entry in names + patterns):
            raise TypeError("entries must be strings")
        for pattern in patterns:
            re.compile(pattern)
        return {"names": names, "patterns": patterns}
    except (ValueError, KeyError, TypeError, re.error) as error:
        raise UsageError(
            f"{path} cannot be read ({type(error).__name__}): it records which files of {folder!r} a pu-diffusion "
            "run wrote, so nothing there can be replaced safely. Choose another output folder, or move the folder's "
            "files you want to keep and delete it."
        ) from None


def is_owned(name: str, manifest: dict) -> bool:
    """Whether a top-level ``name`` of the folder was written (or claimed) by a run of this project."""
    if name in (MANIFEST, MANIFEST + ".tmp"):
        return True
    base = name[: -len(".tmp")] if name.endswith(".tmp") else name
    return any(candidate in manifest["names"] for candidate in (name, base)) or any(
        re.fullmatch(pattern, name) for pattern in manifest["patterns"]
    )


def in_the_way(folder: str, names=(), patterns=()) -> list[str]:
    """The names (and pattern matches) in ``folder`` that a program would write but that no run of ours wrote."""
    if not os.path.isdir(folder):
        return []
    manifest = read_manifest(folder)
    present = set(os.listdir(folder))
    wanted = {candidate for name in names for candidate in (name, name + ".tmp") if candidate in present}
    wanted |= {name for name in present for pattern in patterns if re.fullmatch(pattern, name)}
    return sorted(name for name in wanted if not is_owned(name, manifest))


def describe_names(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def check_free(folder: str, names=(), patterns=(), flag: str = "--output_dir") -> None:
    """Refuse, listing them, the names this program would write into ``folder`` that a user's files already hold."""
    blocking = in_the_way(folder, names, patterns)
    if blocking:
        raise UsageError(
            f"{flag} {folder!r} holds files that no pu-diffusion run wrote, under names this run writes: "
            f"{describe_names(blocking)}. Nothing was changed: move them away, or choose another {flag}."
        )


def claim(folder: str, names=(), patterns=()) -> None:
    """Record ``names``/``patterns`` in ``folder``'s manifest (creating the folder) before writing them."""
    os.makedirs(folder, exist_ok=True)
    manifest = read_manifest(folder)
    added_names = [name for name in names if name not in manifest["names"]]
    added_patterns = [pattern for pattern in patterns if pattern not in manifest["patterns"]]
    if added_names or added_patterns:
        manifest = {
            "names": sorted(manifest["names"] + added_names),
            "patterns": sorted(manifest["patterns"] + added_patterns),
        }
        write_json_atomic(os.path.join(folder, MANIFEST), manifest)


def remove_path(path: str) -> None:
    """Delete ``path``: a folder with its contents, or a file; a symbolic link is removed as a link, never followed."""
    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def remove_owned(folder: str, nested=(), only=None) -> list[str]:
    """Delete what runs of this project wrote into ``folder`` and nothing else; returns the removed names.

    ``nested``: sub-folders that are not owned but may hold a manifest of their own (an evaluation's
    ``eval/``); they are cleared the same way and removed once empty. ``only``: remove owned names among these
    alone, and keep the manifest (a shared log folder). Symbolic links are removed as links, never followed.
    The manifest goes last.
    """
    if not os.path.isdir(folder):
        return []
    manifest = read_manifest(folder)
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name == MANIFEST:
            continue
        if only is not None and name not in only and name.removesuffix(".tmp") not in only:
            continue
        if is_owned(name, manifest):
            remove_path(path)
            removed.append(name)
        elif name in nested and os.path.isdir(path) and not os.path.islink(path):
            removed += [os.path.join(name, inner) for inner in remove_owned(path)]
            if not os.listdir(path):
                os.rmdir(path)
    if only is None and os.path.exists(os.path.join(folder, MANIFEST)):
        os.remove(os.path.join(folder, MANIFEST))
    return removed


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def is_within(inner: str, outer: str) -> bool:
    """Whether path ``inner`` is ``outer`` or lies inside it (resolved; neither needs to exist yet)."""
    return _within(_real(inner), _real(outer))


def check_separate(output: str, output_flag: str, inputs: dict, allow_inside=()) -> None:
    """Refuse an output path that is, contains or lies inside an input (``inputs``: flag → local path or None).

    Inputs that do not exist locally (hub ids) are skipped. ``allow_inside``: input flags the output may lie
    inside (an evaluation's default ``<pipeline>/eval``), but still never be or contain.
    """
    target = _real(output)
    for flag, path in inputs.items():
        if not path or not os.path.exists(path):
            continue
        source = _real(path)
        if target == source:
            relation = "is"
        elif _within(source, target):
            relation = "contains"
        elif _within(target, source) and flag not in allow_inside:
            relation = "lies inside"
        else:
            continue
        raise UsageError(
            f"{output_flag} {output!r} {relation} {flag} {path!r}: a run must never write into what it reads. "
            f"Choose an {output_flag} outside {flag}."
        )


PSEUDO_FILESYSTEMS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
                      "pstore", "bpf", "configfs", "fusectl", "mqueue", "efivarfs", "binfmt_misc"}  # fmt: skip


def pseudo_filesystem(folder: str, mounts_file: str = "/proc/self/mounts") -> str | None:
    """The type of the kernel pseudo-filesystem (procfs, sysfs, …) ``folder`` lies on, else None.

    os.access says such folders are writable for root, yet no output can be written there; the mount table
    (Linux) tells. Where it cannot be read, None: the later write reports its own error.
    """
    try:
        with open(mounts_file) as handle:
            mounts = [line.split()[1:3] for line in handle if len(line.split()) >= 3]
    except OSError:
        return None
    real = os.path.realpath(folder)
    best, kind = "", None
    for point, fstype in mounts:
        for escaped, character in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
            point = point.replace(escaped, character)
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the last mount on a path is the one in effect
            best, kind = point, fstype
    return f"{kind} ({best})" if kind in PSEUDO_FILESYSTEMS else None


def check_writable(path: str, flag: str, folder: bool = True) -> None:
    """Refuse an output path whose folder (or nearest existing parent) cannot be written, before any loading.

    ``folder``: the path is an output folder, so an existing file there is refused too. Checked on the path
    made absolute ("out/../notes.txt" is notes.txt even before out/ exists); messages name the path as given.
    """
    if not path:
        raise UsageError(f"{flag} is empty: give a path.")
    resolved = os.path.abspath(path)
    if folder and os.path.exists(resolved) and not os.path.isdir(resolved):
        raise UsageError(f"{flag} {path!r} is a file, not a folder: choose a folder path.")
    probe = resolved
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe) and probe != resolved:
        raise UsageError(
            f"{flag} {path!r} cannot be created: {probe!r} is a file, not a folder. Choose another {flag}."
        )
    writable_folder = probe if os.path.isdir(probe) else os.path.dirname(probe)
    kind = pseudo_filesystem(writable_folder)
    if kind:
        raise UsageError(
            f"{flag} {path!r} lies on {kind}, a kernel filesystem that holds no files: choose a folder on a disk."
        )
    if not os.access(writable_folder, os.W_OK | os.X_OK):
        raise UsageError(
            f"{flag} {path!r} cannot be written: {writable_folder!r} is read-only for this user. Choose a writable "
            f"{flag}."
        )
    if os.path.exists(resolved) and not os.path.isdir(resolved) and not os.access(resolved, os.W_OK):
        raise UsageError(f"{flag} {path!r} is a read-only file. Choose a writable {flag}.")
