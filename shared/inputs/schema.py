"""What every model's input schema is built from: strict fields, image-URI inputs, scheduler names.

Each model declares its inputs in its own folder (``models/<name>/schema.py``) from these pieces;
like everything in ``shared/`` they import without torch, so the API can validate inputs. The
image fields of a schema are found wherever they sit (``image_fields``): the API stages and checks
every image URI an input holds, and the worker's warm-up fills every required one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, WithJsonSchema

from shared.inputs.images import CheckedImage, ImageInputError, check_uri_scheme, decode_data_uri, inspect_image
from shared.inputs.lora import check_lora_header
from shared.inputs.safetensors_files import LORA, SafetensorsInputError
from shared.settings import Settings


class InputLimits(BaseModel):
    """Bounds applied while validating inputs, passed as validation context (``{"limits": ...}``)."""

    model_config = ConfigDict(frozen=True)

    max_bytes: int
    max_pixels: int
    # Largest output side a request may ask for.
    max_side: int
    # Longest prompt (``PromptText``), in characters.
    max_prompt_chars: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings) -> InputLimits:
        """The settings' bounds: one object per set of values (each create and batch line asks; building it
        was ~4 % of a batch line's checks)."""
        return _limits(
            settings.image_fetch_max_bytes,
            settings.image_max_pixels,
            settings.max_image_side,
            settings.max_prompt_chars,
        )


@cache
def _limits(max_bytes: int, max_pixels: int, max_side: int, max_prompt_chars: int) -> InputLimits:
    return InputLimits(max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side, max_prompt_chars=max_prompt_chars)


def _bounded_prompt(value: str, info: ValidationInfo) -> str:
    limits = (info.context or {}).get("limits")
    if limits is not None and len(value) > limits.max_prompt_chars:
        raise ValueError(f"{len(value)} characters, at most {limits.max_prompt_chars} (KILN_MAX_PROMPT_CHARS)")
    return value


# The JSON schema is a plain string's (so version ids stay); the bound comes from the settings.
PromptText = Annotated[str, AfterValidator(_bounded_prompt)]
"""Prompt text: at most ``KILN_MAX_PROMPT_CHARS`` characters when ``limits`` are in the context."""


def _validate_image_uri(value: str, info: ValidationInfo) -> str:
    """Data URIs are decoded and their header checked when ``limits`` are in the context; a
    ``checked_images`` set there (one request's) skips URIs already found good in that request."""
    context = info.context or {}
    try:
        scheme = check_uri_scheme(value)
        limits = context.get("limits")
        checked = context.get("checked_images")
        if scheme == "data" and limits is not None and (checked is None or value not in checked):
            inspect_image(decode_data_uri(value, limits.max_bytes), limits.max_pixels)
            if checked is not None:
                checked.add(value)
    except ImageInputError as exc:
        raise ValueError(str(exc)) from None
    return value


ImageURI = Annotated[
    str,
    AfterValidator(_validate_image_uri),
    WithJsonSchema({"type": "string", "format": "uri"}),
]
"""An image input: an http(s) URL or a data URI (checked to be a bounded, allowed image)."""


# The standalone fields (``ModelInput.standalone_fields``) of a model whose prompts and seed no other check reads.
PROMPTS_AND_SEED = frozenset({"prompt", "negative_prompt", "seed"})


class ModelInput(BaseModel):
    """Base of every model's inputs: unknown fields are refused so that typos surface as 422s."""

    model_config = ConfigDict(extra="forbid", title="Input")

    # Fields each checked on its own (a prompt, a seed): no validator or check of another field or of the
    # model reads them, and they hold no image or file. A batch's lines that differ only in these have the
    # rest checked once (``api.intake.batch_file``), each line's own values by ``standalone_checks``.
    standalone_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def check_image(cls, where: str, image: CheckedImage) -> None:
        """Refuse (``ImageInputError``, a 422 naming ``where``) an image input that decodes but that
        this model cannot use there; called at submission with what decoding it fully found."""

    @classmethod
    def check_file_header(
        cls, field: str, kind: str, header: Mapping[str, Any], inputs: Mapping[str, Any], settings: Settings
    ) -> None:
        """Refuse (``SafetensorsInputError``, a 422 naming ``field``) a safetensors file input whose header
        (``read_safetensors_header``) this model cannot use; called at submission with the input as JSON.
        Models with other kinds of file inputs override it (``check_tensors`` checks names, dtypes, shapes)."""
        if kind != LORA:
            raise SafetensorsInputError(f"this model takes no {kind} files")
        check_lora_header(header)


@cache
def standalone_checks(input_model: type[ModelInput]) -> dict[str, TypeAdapter[Any]]:
    """Each of ``input_model.standalone_fields``' check, as the model makes it: the field's type and
    constraints (with ``limits`` in the validation context, as ``check_input`` gives them). A field read
    under another name (an alias) has none: its lines are checked whole."""
    checks: dict[str, TypeAdapter[Any]] = {}
    for name in input_model.standalone_fields:
        info = input_model.model_fields[name]
        kind: Any = info.annotation  # a type, or a special form (Optional[...]) the adapter takes too
        if kind is not None and info.alias is None and info.validation_alias is None:
            checks[name] = TypeAdapter(Annotated[kind, *info.metadata] if info.metadata else kind)
    return checks


# Scheduler names users pick from (Replicate's names), shared by every model's inputs. No docstring:
# it would become the enum's description in every input schema, and so change every version id.
class Scheduler(str, Enum):
    DDIM = "DDIM"
    K_EULER = "K_EULER"
    DPM_SOLVER_MULTISTEP = "DPMSolverMultistep"
    K_EULER_ANCESTRAL = "K_EULER_ANCESTRAL"
    PNDM = "PNDM"
    KLMS = "KLMS"


# What a prediction trades: "fast" gives up some pixels for less GPU work (models/kit/fast_mode.py).
class Speed(str, Enum):
    QUALITY = "quality"
    FAST = "fast"


def speed_field(order: int) -> Any:
    """The ``speed`` input of a model with a fast mode, at ``x-order`` ``order``; None: the worker's default."""
    return Field(
        default=None,
        description="quality, or fast: fewer GPU operations per image (cheaper) for slightly different "
        "pixels. Default: quality, unless the deployment made fast its default.",
        json_schema_extra={"x-order": order},
    )


# Path steps of an ``ImageField`` that stand for every item of a list / every value of a mapping.
EVERY_ITEM = "[]"
EVERY_VALUE = "{}"


@dataclass(frozen=True)
class ImageField:
    """Where an image URI sits in a model's input: field names from the top, ``EVERY_ITEM`` for the
    items of a list, ``EVERY_VALUE`` for the values of a mapping (``("references", "[]")``)."""

    path: tuple[str, ...]
    # Set in every valid input: each field on the way is required (a required list needs an item or more).
    required: bool


@cache
def _schema(input_model: type[ModelInput]) -> dict[str, Any]:
    return input_model.model_json_schema()


def _resolved(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` with its ``$ref`` (a nested model) replaced by the definition it points at."""
    if "$ref" not in schema:
        return schema
    return {**defs[schema["$ref"].rsplit("/", 1)[-1]], **{key: value for key, value in schema.items() if key != "$ref"}}


def _options(schema: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """The schemas a value may (also) have to match: ``Optional``, unions, ``allOf`` wrappers."""
    return (*schema.get("anyOf", ()), *schema.get("oneOf", ()), *schema.get("allOf", ()))


def _is_image(schema: Mapping[str, Any]) -> bool:
    return schema.get("format") == "uri"


@cache
def image_fields(input_model: type[ModelInput]) -> tuple[ImageField, ...]:
    """Every place an input of ``input_model`` can hold an image URI, at any depth (lists, nested
    models, optional fields, mappings), read off the JSON schema clients see (``format: uri``).

    A model nested in itself is expanded once: at its second level an image is never required.
    """
    schema = _schema(input_model)
    found: dict[tuple[str, ...], bool] = {}
    for path, required in _image_paths(schema, schema.get("$defs", {}), (), True, frozenset()):
        found[path] = found.get(path, False) or required
    return tuple(ImageField(path, required) for path, required in found.items())


def _image_paths(
    schema: Mapping[str, Any], defs: Mapping[str, Any], path: tuple[str, ...], required: bool, expanding: frozenset[str]
) -> Iterator[tuple[tuple[str, ...], bool]]:
    if "$ref" in schema:
        if schema["$ref"] in expanding:
            return
        expanding = expanding | {schema["$ref"]}
        schema = _resolved(schema, defs)
    if _is_image(schema):
        yield path, required
        return
    for option in _options(schema):
        yield from _image_paths(option, defs, path, required, expanding)
    if isinstance(schema.get("items"), Mapping):
        yield from _image_paths(schema["items"], defs, (*path, EVERY_ITEM), required, expanding)
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from _image_paths(schema["additionalProperties"], defs, (*path, EVERY_VALUE), False, expanding)
    needed = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        yield from _image_paths(prop, defs, (*path, name), required and name in needed, expanding)


def image_inputs(input_model: type[ModelInput], inputs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every image URI set in ``inputs`` (an input as JSON, e.g. as stored), with where it is, in the
    dotted form validation errors use: ``("input_image", uri)``, ``("references.1", uri)``.

    The input is walked along its schema, so images at any depth are found, nested models that
    contain themselves included.
    """
    finder = _image_finder(input_model)
    if finder is not None:
        found: dict[str, str] = {}
        finder.find(inputs, (), found)
        return list(found.items())
    schema = _schema(input_model)
    found = dict(_images_in(inputs, schema, schema.get("$defs", {}), ()))
    return list(found.items())


@dataclass
class _ImageFinder:
    """Where images sit below one place of an input (built from ``image_fields``): whether an image may
    be there, and the places below it (list items, object fields) that may hold one."""

    image: bool = False
    items: _ImageFinder | None = None
    names: dict[str, _ImageFinder] = field(default_factory=dict)

    def find(self, value: Any, where: tuple[str, ...], found: dict[str, str]) -> None:
        """Every image URI below ``value``, in the order the walk along the schema finds them."""
        if self.image and isinstance(value, str) and value:
            found.setdefault(".".join(where), value)
        if self.items is not None and isinstance(value, list):
            for index, item in enumerate(value):
                self.items.find(item, (*where, str(index)), found)
        if self.names and isinstance(value, Mapping):
            for key, item in value.items():
                if (below := self.names.get(key)) is not None:
                    below.find(item, (*where, str(key)), found)


@cache
def _image_finder(input_model: type[ModelInput]) -> _ImageFinder | None:
    """``image_inputs``'s walk compiled once per model from its ``image_fields`` (a batch file checks
    100,000 inputs: the walk along the JSON schema was most of each one's time). None for a model the
    fields do not describe fully, which keeps the walk: a model nested in itself (its fields stop at
    the second level, its inputs need not) or a mapping of images (``EVERY_VALUE``)."""
    schema = _schema(input_model)
    if _nests_itself(schema.get("$defs", {})):
        return None
    top = _ImageFinder()
    for image in image_fields(input_model):
        if EVERY_VALUE in image.path:
            return None
        node = top
        for step in image.path:
            if step == EVERY_ITEM:
                node.items = node.items or _ImageFinder()
                node = node.items
            else:
                node = node.names.setdefault(step, _ImageFinder())
        node.image = True
    return top


def _nests_itself(defs: Mapping[str, Any]) -> bool:
    """Whether a definition of ``defs`` refers to itself, directly or through others."""
    refers = {name: set(re.findall(r'"#/\$defs/([^"]+)"', json.dumps(schema))) for name, schema in defs.items()}

    def reaches_itself(start: str) -> bool:
        seen: set[str] = set()
        waiting = list(refers.get(start, ()))
        while waiting:
            name = waiting.pop()
            if name == start:
                return True
            if name not in seen:
                seen.add(name)
                waiting += refers.get(name, ())
        return False

    return any(reaches_itself(name) for name in refers)


def _images_in(
    value: Any, schema: Mapping[str, Any], defs: Mapping[str, Any], where: tuple[str, ...]
) -> Iterator[tuple[str, str]]:
    schema = _resolved(schema, defs)
    if _is_image(schema):
        if isinstance(value, str) and value:
            yield ".".join(where), value
        return
    for option in _options(schema):
        yield from _images_in(value, option, defs, where)
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            yield from _images_in(item, schema["items"], defs, (*where, str(index)))
    if isinstance(value, Mapping):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                yield from _images_in(item, properties[key], defs, (*where, str(key)))
            elif isinstance(extra, Mapping):
                yield from _images_in(item, extra, defs, (*where, str(key)))
