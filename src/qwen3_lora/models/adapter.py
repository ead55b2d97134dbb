"""An adapter folder (the output of `train`, or one of its checkpoints) and what it takes to use it:
its `adapter_config.json`, the base model it names (resolved once), the tokenizer saved beside
it, and the token ids that end an answer. Predict, eval, test, serve and merge all ask here.

A folder holding a full model instead (config.json and no adapter config: the output of
`merge`) is used as the model itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..prompt.render import end_of_turn_token
from .loading import damaged_safetensors, load_tokenizer, with_pad_fallback
from .source import ModelSource, resolve_model_source

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
log = logging.getLogger(__name__)


class AdapterError(UserError):
    """An adapter folder is missing, unreadable or unusable; the message says what to pass."""


@dataclass(frozen=True)
class AdapterFolder:
    """A PEFT LoRA adapter folder and its parsed `adapter_config.json`."""

    path: Path
    config: dict

    @classmethod
    def read(cls, folder: str | Path) -> AdapterFolder:
        path = Path(folder).expanduser()
        config_path = path / ADAPTER_CONFIG
        if not config_path.is_file():
            raise AdapterError(
                f"{config_path} not found: the adapter must be a PEFT adapter folder (the "
                f"output_dir of `qwen3-lora train`, holding {ADAPTER_CONFIG} and "
                f"adapter_model.safetensors)"
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdapterError(
                f"{config_path}: cannot read the adapter config ({exc}); the adapter folder is "
                f"damaged: copy it again, or train again"
            ) from exc
        if not isinstance(config, dict):
            raise AdapterError(f"{config_path}: expected a JSON object")
        if config.get("peft_type", "LORA") != "LORA":
            raise AdapterError(
                f"{config_path}: peft_type is {config.get('peft_type')!r}; only LoRA adapters "
                f"are supported"
            )
        _check_weights(path)
        return cls(path, config)

    @property
    def base_model_name(self) -> str | None:
        """The base model the adapter was trained on, as `train` recorded it."""
        return self.config.get("base_model_name_or_path") or None

    def base_source(self, override: str | None = None, hub: str = "huggingface") -> ModelSource:
        """The base model to load under the adapter: `override`, else the recorded one."""
        name = override or self.base_model_name
        if not name:
            raise AdapterError(
                f"{self.path / ADAPTER_CONFIG} names no base_model_name_or_path; pass the base "
                f"model with --base-model"
            )
        return resolve_model_source(name, hub)

    def load_tokenizer(self, trust_remote_code: bool = False) -> Any | None:
        """The tokenizer `train` saved beside the adapter (with its chat template), if any."""
        if not any((self.path / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json")):
            return None
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(self.path), trust_remote_code=trust_remote_code
            )
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            if isinstance(exc, (TypeError, AttributeError, NameError, ImportError)):
                raise  # a bug or a missing package, not a damaged file
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise AdapterError(
                f"cannot load the tokenizer saved in {self.path} ({type(exc).__name__}: "
                f"{first}); its tokenizer files are damaged: copy them again from the training "
                f"output"
            ) from exc
        return with_pad_fallback(tokenizer)

    def attach(self, model, base_name: str):
        """The adapter's LoRA weights on `model` (the base `base_name`), for inference; a clear
        `AdapterError` when they do not fit that base."""
        from peft import PeftModel

        try:
            with quiet_peft_wrapping():
                return PeftModel.from_pretrained(model, str(self.path), is_trainable=False)
        except RuntimeError as exc:
            mismatches = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
            if not mismatches:
                raise
            example = mismatches[0].removeprefix("size mismatch for ")
            raise AdapterError(
                f"the adapter in {self.path} does not fit the base model {base_name}: "
                f"{len(mismatches)} LoRA weight shape(s) differ, e.g. {example}\n"
                f"It was trained on {self.base_model_name or 'another base model'}: pass that "
                f"base with --base-model, or leave --base-model out to use it."
            ) from exc


def _check_weights(folder: Path) -> None:
    """Before the base model is loaded: the adapter's weights are there and not cut off."""
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AdapterError(
            f"{folder} holds no {ADAPTER_WEIGHTS}: its training did not finish writing it, or "
            f"the folder was copied without it; train again (--resume continues from the last "
            f"checkpoint) or copy it again"
        )
    if why := damaged_safetensors(weights):
        raise AdapterError(
            f"{weights} is damaged or incomplete ({why}): an interrupted save or copy? Train "
            f"again (--resume continues from the last checkpoint) or copy it again"
        )


@contextlib.contextmanager
def quiet_peft_wrapping():
    """Silence one warning that is not about our code, around our PEFT calls only.

    PEFT 0.21's `PeftModel.__init__` reads `model.is_gradient_checkpointing`, a property that
    transformers 5 deprecated, so every `get_peft_model` and adapter load printed a
    FutureWarning that a user can do nothing about. Only that message, only as a FutureWarning
    from transformers.modeling_utils, is ignored; everything else still warns.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"`is_gradient_checkpointing` is deprecated",
            category=FutureWarning,
            module=r"transformers\.modeling_utils",
        )
        yield


@dataclass(frozen=True)
class ModelToLoad:
    """What an inference command loads: a base model source, and an adapter on it or none."""

    base: ModelSource
    adapter: AdapterFolder | None = None

    def load_tokenizer(self, trust_remote_code: bool = False):
        """The adapter's own tokenizer where it saved one, else the base model's."""
        saved = self.adapter.load_tokenizer(trust_remote_code) if self.adapter else None
        return saved or load_tokenizer(self.base, trust_remote_code)


def resolve_model_to_load(
    adapter: str | Path | None, base_model: str | None, hub: str = "huggingface"
) -> ModelToLoad:
    """`--adapter` and `--base-model` of an inference command, resolved once.

    With no `base_model` the adapter's config names it. An `adapter` folder holding a full
    model (config.json, no adapter_config.json) is the model itself.
    """
    if adapter is None:
        if not base_model:
            raise AdapterError("nothing to load: give an adapter folder or a base model")
        return ModelToLoad(resolve_model_source(base_model, hub))
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise AdapterError(f"adapter folder {folder} does not exist")
    if not (folder / ADAPTER_CONFIG).is_file():
        if not (folder / "config.json").is_file():
            raise AdapterError(
                f"{folder} holds neither {ADAPTER_CONFIG} (a LoRA adapter) nor config.json (a "
                f"merged model); pass the --output-dir of `qwen3-lora train` or of "
                f"`qwen3-lora merge`"
            )
        if base_model:
            log.warning("%s is a full model: ignoring base model %s", folder, base_model)
        return ModelToLoad(resolve_model_source(str(folder), hub))
    found = AdapterFolder.read(folder)
    return ModelToLoad(found.base_source(base_model, hub), found)


def stop_token_ids(tokenizer: Any, configured: int | list[int] | None = None) -> list[int]:
    """The ids that end an answer: a generation config's eos ids, then the chat template's end
    of turn and the tokenizer's eos, without repeats."""
    ids = [] if configured is None else [configured] if isinstance(configured, int) else configured
    ids = list(ids)
    for token in (end_of_turn_token(tokenizer), tokenizer.eos_token):
        token_id = tokenizer.convert_tokens_to_ids(token) if token else None
        if isinstance(token_id, int) and token_id >= 0:
            ids.append(token_id)
    return list(dict.fromkeys(ids))
