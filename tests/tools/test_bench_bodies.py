"""``make bench`` sends what users send: every create and every batch item its own prompt, seed and images."""

from __future__ import annotations

import base64
import io

import orjson
import pytest
from PIL import Image

from models.registry import find_model
from shared.inputs.schema import InputLimits
from shared.settings import Settings
from tools import bench, bench_downloads
from tools.batch_lines import MODEL


def image_of(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2])))


@pytest.fixture(scope="module")
def validate():
    spec, limits = find_model(MODEL), InputLimits.from_settings(Settings(_env_file=None))
    return lambda raw: spec.input_model.model_validate(raw, context={"limits": limits})


def test_each_single_create_has_its_own_prompt_seed_and_images(validate) -> None:
    inputs = [orjson.loads(bench.single_body(index))["input"] for index in range(200)]
    for field in ("prompt", "seed", "input_image", "ip_image"):
        assert len({str(found[field]) for found in inputs}) == 200, field
    assert not {found["input_image"] for found in inputs} & {found["ip_image"] for found in inputs}
    for found in inputs[:5]:
        validate(found)
        assert image_of(found["input_image"]).size == (64, 64)


def test_each_batch_item_has_its_own_prompt_seed_and_structure_image_beside_the_batchs_style() -> None:
    first, second = (orjson.loads(bench.batch_body(50, index))["predictions"] for index in (0, 1))
    items = [item["input"] for item in first + second]
    for field in ("prompt", "seed", "input_image"):
        assert len({str(found[field]) for found in items}) == 100, field
    styles = [{item["input"]["ip_image"] for item in batch} for batch in (first, second)]
    assert [len(style) for style in styles] == [1, 1] and styles[0] != styles[1]
    assert {item["model"] for item in first} == {MODEL}


def test_the_clients_have_enough_bodies_for_the_run() -> None:
    assert bench.single_load(8).per_thread >= 8 * 200
    batch = bench.batch_load(1000, 8, threads=2)
    assert batch.per_thread * 1000 * 2 >= 8 * 10_000
    assert orjson.loads(batch.make_body(3))["predictions"][0]["input"]["seed"] == 3000


def test_the_download_bench_fetches_distinct_images() -> None:
    files = [bench_downloads.distinct_png(n) for n in range(bench_downloads.FILES)]
    assert len(set(files)) == bench_downloads.FILES
    assert {Image.open(io.BytesIO(png)).size for png in files} == {(bench_downloads.SIDE, bench_downloads.SIDE)}
