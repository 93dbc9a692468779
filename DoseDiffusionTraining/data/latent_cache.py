"""A latent cache: every training case's modalities encoded once by the run's frozen codec, so that
stages A and B neither prepare nor encode cases during training and hold none of them in memory.

``dosediffusion-train cache-latents --config RUN.yaml --out DIR`` (:func:`build_latent_cache`)
writes ``DIR/shard-NNNNN.safetensors``: float32 tensors ``CASE/MODALITY`` (C, d, h, w), the codec's
encoding of the prepared channel (D, H, W), and, when the run mirrors its batches
(``train.flip_lr_probability`` > 0), ``CASE/MODALITY/flip``, the encoding of the channel mirrored
along x (the Wan VAE is not flip-equivariant: the latent of the mirrored volume is not the mirrored
latent). A shard closes before the case that would take it over the size limit. Each shard is
written beside and renamed, and its header metadata names the cases it holds and a digest of the
preprocessing, codec and flip setting they were made with, so a rerun keeps the finished shards of
an interrupted (or earlier) build and encodes only the remaining cases. ``DIR/index.json`` is written
last, atomically: the run's fingerprint (preprocessing, codec identity, the ordered training case
names), whether mirrored latents are cached, and per case its shard, modalities and latent shape.
A folder without ``index.json`` is an incomplete cache.

A run with ``data.latent_cache: DIR`` reads it through :func:`open_latent_cache`, which refuses a
cache made for another preprocessing, codec or case list; :class:`LatentCases` then reads one case
at a time from its memory-mapped shard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from dosediffusion.errors import InputError
from dosediffusion.io.atomic import atomic_write, atomic_write_bytes
from dosediffusion.model.codecs import PatchCodec, WanVAECodec
from dosediffusion_training.data.dataset import PreparedCases, case_name, collate
from dosediffusion_training.data.sources import dose_rules
from dosediffusion_training.training.config import RunConfig

INDEX, FORMAT = "index.json", "dosediffusion-latent-cache-1"
#: Suffix of the tensor names of mirrored (flipped along x) volumes' latents.
FLIP = "/flip"


class LatentBatch(dict):
    """A collated batch of cached latents ``{modality: (B, C, d, h, w)}``: already encoded."""


def codec_identity(codec: PatchCodec | WanVAECodec) -> dict:
    """What determines a codec's latents: the patch factors, or a SHA-256 of the VAE's weights and
    latent normalisation statistics (so a moved VAE folder is still the same codec)."""
    if isinstance(codec, PatchCodec):
        return {"type": "patch", "factors": list(codec.factors)}
    digest = hashlib.sha256(json.dumps([codec.vae.config.latents_mean, codec.vae.config.latents_std]).encode())
    for name, tensor in sorted(codec.vae.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {list(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"type": "wan_vae", "weights_sha256": digest.hexdigest()}


def fingerprint(config: RunConfig, codec: PatchCodec | WanVAECodec, paths: Sequence[Path]) -> dict:
    """What a cache must have been made with to serve the run: preprocessing, codec, case names in order
    (a case whose source scales its dose, :func:`~dosediffusion_training.data.sources.dose_rules`, as
    ``name@rule``: its latents differ)."""
    rules = dose_rules(config.data)
    return {"preprocessing": json.loads(json.dumps(config.preprocessing.to_dict())), "codec": codec_identity(codec),
            "cases": [case_name(p) + (f"@{rules[case_name(p)]}" if case_name(p) in rules else "") for p in paths]}


def _content_digest(found: dict, flipped: bool) -> str:
    """Digest of what one case's cached tensors depend on (not the case list)."""
    content = {"format": FORMAT, "preprocessing": found["preprocessing"], "codec": found["codec"], "flipped": flipped}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def check_latent_model(config: RunConfig) -> None:
    """Raise unless the run's model trains on latents (the MedNeXt regression model works on volumes)."""
    if config.model.get("type", "any2any") == "mednext":
        raise InputError("model.type mednext trains on volumes, not latents: a latent cache serves the diffusion "
                         "model only (train MedNeXt without data.latent_cache)")


def _finished_shards(out: Path, digest: str) -> dict[str, dict]:
    """``{case: index entry}`` of the complete shards in ``out`` made with ``digest``; other shards
    (another preprocessing, codec or flip setting) and temporary files of an interrupted build are deleted."""
    for leftover in out.glob(".shard-*.part.safetensors"):
        leftover.unlink()
    entries = {}
    for shard in sorted(out.glob("shard-*.safetensors")):
        try:
            with safe_open(shard, framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (OSError, SafetensorError):
            metadata = {}
        if metadata.get("digest") != digest:
            shard.unlink()
            continue
        entries.update({name: {"shard": shard.name, **entry} for name, entry in json.loads(metadata["cases"]).items()})
    return entries


def _encode_case(codec: PatchCodec | WanVAECodec, channels: dict[str, torch.Tensor], flipped: bool, batch_size: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """``{MODALITY[/flip]: latent (C, d, h, w) float32 on the CPU}`` of one case's channels (1, D, H, W),
    encoded ``batch_size`` volumes at a time."""
    names = list(channels)
    volumes = torch.stack([channels[m] for m in names])  # (M, 1, D, H, W)
    if flipped:
        names += [m + FLIP for m in names]
        volumes = torch.cat([volumes, torch.flip(volumes, dims=[-1])])
    with torch.no_grad():
        latents = torch.cat([codec.encode(chunk.to(device)).cpu() for chunk in volumes.split(batch_size)])
    return {name: latent.clone() for name, latent in zip(names, latents, strict=True)}


def _write_shard(path: Path, tensors: dict[str, torch.Tensor], cases: dict[str, dict], digest: str) -> None:
    metadata = {"digest": digest, "cases": json.dumps(cases)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def build_latent_cache(config: RunConfig, codec: PatchCodec | WanVAECodec, paths: Sequence[Path], out: str | Path,
                       shard_gib: float = 1.0, batch_size: int = 8, device: str | torch.device = "cpu") -> dict:
    """Encode the cases at ``paths`` (the run's training cases) into a latent cache in ``out`` (see the
    module docstring), keeping the finished shards of an earlier build with the same settings. Shards
    close at ``shard_gib`` GiB; ``batch_size`` volumes go through the codec at a time. Returns counts:
    ``{"cases", "encoded", "shards", "bytes"}``."""
    check_latent_model(config)
    if not paths:
        raise InputError("no training cases to encode")
    codec.check_shape(tuple(config.preprocessing.crop_shape))
    if shard_gib <= 0 or batch_size < 1:
        raise InputError(f"the shard size ({shard_gib} GiB) must be positive and the batch size ({batch_size}) at least 1")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("the latent cache must be a folder", out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX).unlink(missing_ok=True)  # from here until the new index, the cache is incomplete
    found = fingerprint(config, codec, paths)
    flipped = config.train.flip_lr_probability > 0
    digest = _content_digest(found, flipped)
    entries = _finished_shards(out, digest)
    todo = [i for i, name in enumerate(found["cases"]) if name not in entries]
    number = max((int(p.stem[6:]) for p in out.glob("shard-*.safetensors")), default=-1) + 1
    cases = PreparedCases(paths, config.preprocessing, config.data.get("cache_dir"), ram_cache_gib=0,  # each read once
                          dose_rules=dose_rules(config.data))
    device = torch.device(device)
    codec.to(device)
    tensors, held, size = {}, {}, 0  # the open shard: its tensors, its cases' entries, its bytes
    for i in tqdm(todo, desc="caching latents", unit="case"):
        name = found["cases"][i]
        latents = _encode_case(codec, cases[i], flipped, batch_size, device)
        nbytes = sum(t.nbytes for t in latents.values())
        if held and size + nbytes > shard_gib * 2**30:
            _write_shard(out / f"shard-{number:05d}.safetensors", tensors, held, digest)
            tensors, held, size, number = {}, {}, 0, number + 1
        modalities = [k for k in latents if not k.endswith(FLIP)]
        held[name] = {"modalities": modalities, "shape": list(latents[modalities[0]].shape)}
        entries[name] = {"shard": f"shard-{number:05d}.safetensors", **held[name]}
        tensors.update({f"{name}/{key}": t for key, t in latents.items()})
        size += nbytes
    if held:
        _write_shard(out / f"shard-{number:05d}.safetensors", tensors, held, digest)
    index = {"format": FORMAT, "fingerprint": found, "flipped": flipped, "codec_path": config.codec.get("path"),
             "cases": {name: entries[name] for name in found["cases"]}}
    atomic_write_bytes(out / INDEX, json.dumps(index, indent=1).encode())
    shards = {entry["shard"] for entry in index["cases"].values()}
    return {"cases": len(found["cases"]), "encoded": len(todo), "shards": len(shards),
            "bytes": sum((out / s).stat().st_size for s in shards)}


def _differences(cached: dict, run: dict) -> list[str]:
    """What differs between a cache's fingerprint and the run's, in words."""
    found = []
    for section in ("preprocessing", "codec"):
        keys = sorted(set(cached[section]) | set(run[section]))
        found += [f"{section}.{k}: cache {cached[section].get(k)!r}, run {run[section].get(k)!r}"
                  for k in keys if cached[section].get(k) != run[section].get(k)]
    if cached["cases"] != run["cases"]:
        in_cache, in_run = set(cached["cases"]), set(run["cases"])
        only_run = [n for n in run["cases"] if n not in in_cache]
        only_cache = [n for n in cached["cases"] if n not in in_run]
        found.append(f"cases: {len(only_run)} only in the run {only_run[:3]}, {len(only_cache)} only in the cache "
                     f"{only_cache[:3]}" if only_run or only_cache else "cases: the same cases in another order")
    return found


def open_latent_cache(config: RunConfig, codec: PatchCodec | WanVAECodec, paths: Sequence[Path]) -> LatentCases:
    """The run's training cases (``paths``) from the cache ``data.latent_cache``, after checking that it is
    complete and was made with the run's preprocessing, codec and cases (and mirrored latents when the
    run flips)."""
    folder = Path(config.data["latent_cache"])
    rebuild = f"dosediffusion-train cache-latents --config RUN.yaml --out {folder}"
    try:
        index = json.loads((folder / INDEX).read_text())
    except FileNotFoundError:
        raise InputError(f"no {INDEX}: not a latent cache, or its build was interrupted; (re)run {rebuild}",
                         folder) from None
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"unreadable {INDEX} ({error}); rerun {rebuild}", folder) from None
    if index.get("format") != FORMAT:
        raise InputError(f"latent cache format {index.get('format')!r}, expected {FORMAT}; rebuild: {rebuild}", folder)
    differing = _differences(index["fingerprint"], fingerprint(config, codec, paths))
    if differing:
        raise InputError(f"the latent cache was made for another run ({'; '.join(differing)}); rebuild it for this "
                         f"run: {rebuild}", folder)
    if config.train.flip_lr_probability > 0 and not index["flipped"]:
        raise InputError("the latent cache has no mirrored latents but train.flip_lr_probability is "
                         f"{config.train.flip_lr_probability}; rebuild it for this run: {rebuild}", folder)
    missing = sorted({e["shard"] for e in index["cases"].values() if not (folder / e["shard"]).is_file()})
    if missing:
        raise InputError(f"shards missing from the latent cache: {', '.join(missing[:3])}; rerun {rebuild}", folder)
    names = index["fingerprint"]["cases"]
    return LatentCases(folder, names, [index["cases"][n] for n in names])


class LatentCases(Dataset):
    """Item ``i``: ``{modality: latent (C, d, h, w) float32}`` of case ``names[i]``, read from its shard in
    ``folder`` when asked (memory-mapped, one tensor at a time); nothing is kept between items.
    ``entries[i]``: the case's index entry (``shard``, ``modalities``, ``shape``)."""

    def __init__(self, folder: str | Path, names: Sequence[str], entries: Sequence[dict]):
        self.folder, self.names, self.entries = Path(folder), list(names), list(entries)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.item(index)

    def item(self, index: int, flipped: bool = False) -> dict[str, torch.Tensor]:
        """Item ``index``; with ``flipped`` the latents of the volumes mirrored along x."""
        entry, suffix = self.entries[index], FLIP if flipped else ""
        with safe_open(self.folder / entry["shard"], framework="pt") as shard:
            return {m: shard.get_tensor(f"{self.names[index]}/{m}{suffix}") for m in entry["modalities"]}

    def batch(self, indices: Sequence[int], flipped: bool = False) -> LatentBatch:
        """The items ``indices`` collated (:func:`~dosediffusion_training.data.dataset.collate`)."""
        return LatentBatch(collate([self.item(i, flipped) for i in indices]))
