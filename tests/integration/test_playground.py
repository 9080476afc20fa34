"""The playground in a real headless browser (Debian's chromium via Playwright) against the real
stack: the form built from each model's schema, a prediction watched to its end, isolation between
tokens and the history's pages."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pydantic import Field

from api.app import create_app
from models.registry import MODELS
from models.sd2_depth2img.schema import Depth2ImgInput
from models.sdxl_family.fake_weights.tiny_lora import write_tiny_lora
from shared.inputs.schema import Scheduler
from tests.support import png_bytes, wait_for_status, wait_until
from tests.support.browser import CHROMIUM_ARGS, chromium_or_skip, serve_in_thread
from tests.support.predictions import create, depth2img_input, run_xl
from tests.support.stack import PAGE_SIZE, TOKEN_A, TOKEN_B
from tests.support.step_gates import StepGate, wait_until_waiting

# Room for installing chromium with apt on a fresh machine, within the session's first test.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

TERMINAL = {"succeeded", "failed", "canceled"}
# Generous for a CPU shared with other workers; a tiny depth2img run takes about a second.
UI_TIMEOUT_MS = 90_000


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = chromium_or_skip()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser profile (empty local storage) per test; uncaught script errors and content
    security policy violations fail the test."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(UI_TIMEOUT_MS)
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    tab.on(
        "console", lambda message: problems.append(message.text) if "Content Security Policy" in message.text else None
    )
    yield tab
    context.close()
    assert not problems, f"the page reported script problems: {problems}"


def enter_token(page: Page, base_url: str, token: str) -> None:
    page.goto(f"{base_url}/")
    forget = page.get_by_role("button", name="Forget it")
    if forget.is_visible():
        forget.click()
        page.wait_for_load_state()
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Save token").click()
    expect(page.get_by_text("Token saved in this browser")).to_be_visible()
    assert page.evaluate("localStorage.getItem('kiln.token')") == token


def test_depth2img_from_the_form_to_a_rendered_output(stack, page, client, tmp_path):
    enter_token(page, stack.base_url, TOKEN_A)
    expect(page.get_by_role("link", name="kiln/ip-adapter-openpose-xl")).to_be_visible()
    page.get_by_role("link", name="kiln/sd2-depth2img").click()

    page.get_by_label("input_image").set_input_files(
        files=[{"name": "room.png", "mimeType": "image/png", "buffer": png_bytes(128, 96, seed=7)}]
    )
    page.get_by_label("prompt", exact=True).fill("a brick kiln at dusk")
    page.get_by_label("num_inference_steps", exact=True).fill("4")
    # At full strength the pipeline runs every one of the 4 steps, so the bar must reach 4 / 4.
    page.get_by_label("prompt_strength", exact=True).fill("1")
    page.get_by_label("seed", exact=True).fill("1234")
    page.get_by_role("button", name="Run").click()

    page.wait_for_url("**/playground/predictions/*")
    assert TOKEN_A not in page.url
    prediction_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#status")).to_have_text("succeeded", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#progress-text")).to_have_text("4 / 4 steps")
    assert page.eval_on_selector("#progress", "bar => [bar.value, bar.max]") == [4, 4]
    image = page.locator("#gallery img").first
    expect(image).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    # The output has the input's size rounded down to a multiple of 64.
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [128, 64]

    prediction = client.get(f"/v1/predictions/{prediction_id}").json()
    assert prediction["urls"]["web"] == page.url
    # The picked file went through the Files API; the form's values are the prediction's input.
    assert prediction["input"]["input_image"].startswith(f"{stack.base_url}/v1/files/")
    assert prediction["input"] | {"input_image": None} == {
        "prompt": "a brick kiln at dusk",
        "input_image": None,
        "prompt_strength": 1,
        "num_outputs": 1,
        "num_inference_steps": 4,
        "guidance_scale": 7.5,
        "scheduler": "DPMSolverMultistep",
        "seed": 1234,
        "output_format": "png",
        "output_quality": 90,
    }
    expect(page.locator("#logs")).to_contain_text("Using seed: 1234")
    expect(page.locator("#timings")).to_contain_text("Predict time")
    assert f'"version": "{prediction["version"]}"' in page.locator("#curl-snippet").inner_text()
    assert '"seed": 1234' in page.locator("#python-snippet").inner_text()

    screenshot = tmp_path / "prediction-page.png"
    page.screenshot(path=screenshot, full_page=True)
    assert screenshot.stat().st_size > 10_000


def test_the_xl_form_takes_several_image_prompts_with_weights_a_lora_file_and_an_output_format(
    stack, page, client, tmp_path
):
    enter_token(page, stack.base_url, TOKEN_A)
    page.goto(f"{stack.base_url}/playground/models/kiln/ip-adapter-depth-xl")
    expect(page.locator("#prediction-form")).to_be_visible()
    # A list of images is several pickers, a list of weights several number fields.
    assert page.locator("#fields .field-image-list").first.locator("input[type=file]").count() == 4
    picture = {"mimeType": "image/png"}
    page.locator("#input-control_image").set_input_files(
        files=[picture | {"name": "depth.png", "buffer": png_bytes(64, 64, seed=3)}]
    )
    for slot, seed in (("#input-ip_images", 1), ("#input-ip_images-1", 2)):
        page.locator(slot).set_input_files(
            files=[picture | {"name": f"prompt-{seed}.png", "buffer": png_bytes(64, 64, seed=seed)}]
        )
    page.locator("#input-ip_adapter_scales").fill("0.5")
    page.locator("#input-ip_adapter_scales-1").fill("1.5")
    lora = tmp_path / "tiny.safetensors"
    write_tiny_lora(lora)
    page.locator("#input-lora_weights").set_input_files(str(lora))
    page.get_by_label("prompt", exact=True).fill("a clay kiln")
    page.get_by_label("num_inference_steps", exact=True).fill("3")
    page.get_by_label("width", exact=True).fill("64")
    page.get_by_label("height", exact=True).fill("64")
    page.get_by_label("output_format", exact=True).select_option("webp")
    page.get_by_role("button", name="Run").click()

    page.wait_for_url("**/playground/predictions/*")
    expect(page.locator("#status")).to_have_text("succeeded", timeout=UI_TIMEOUT_MS)
    prediction = client.get(f"/v1/predictions/{page.url.rsplit('/', 1)[1]}").json()
    uploaded = f"{stack.base_url}/v1/files/"
    assert [url.startswith(uploaded) for url in prediction["input"]["ip_images"]] == [True, True]
    assert prediction["input"]["ip_adapter_scales"] == [0.5, 1.5]
    assert prediction["input"]["lora_weights"].startswith(uploaded)
    assert "ip_image" not in prediction["input"]
    assert "Loaded lora_weights" in prediction["logs"] or "Using cached lora_weights" in prediction["logs"]
    [output] = prediction["output"]
    assert output.split("?")[0].endswith("/out-0.webp")
    download = client.get(output)
    assert download.headers["content-type"] == "image/webp" and download.content[8:12] == b"WEBP"


def test_another_tokens_prediction_page_shows_nothing_of_it(stack, page, client):
    secret_prompt = "the owner's secret prompt"
    created = create(client, prompt=secret_prompt)
    wait_for_status(client, created["id"], TERMINAL)

    enter_token(page, stack.base_url, TOKEN_B)
    page.goto(created["urls"]["web"])
    expect(page.get_by_text("Prediction not found.")).to_be_visible()
    text = page.locator("body").inner_text()
    for leak in (secret_prompt, "sd2-depth2img", "succeeded", "Using seed"):
        assert leak not in text
    assert page.locator("img").count() == 0
    assert page.locator("#prediction").is_hidden()

    # The owner's token on the same page sees it all.
    enter_token(page, stack.base_url, TOKEN_A)
    page.goto(created["urls"]["web"])
    expect(page.locator("#input")).to_contain_text(secret_prompt)


def test_a_queued_predictions_page_shows_its_place_in_line_counting_down(stack, page, client):
    with StepGate(stack.redis_url) as running, StepGate(stack.redis_url) as ahead:
        blocker = create(client, prompt=running.prompt)
        wait_until_waiting(client, blocker["id"])
        create(client, prompt=ahead.prompt)
        queued = create(client, prompt="third in line")
        assert queued["queue_position"] == 1

        enter_token(page, stack.base_url, TOKEN_A)
        page.goto(queued["urls"]["web"])
        expect(page.locator("#progress-text")).to_have_text("2nd in line")
        running.open()  # the one ahead starts: the stream's status event brings the new place
        expect(page.locator("#progress-text")).to_have_text("1st in line")
        ahead.open()
        expect(page.locator("#status")).to_have_text("succeeded")


def test_the_control_map_is_shown_beside_the_outputs(stack, page, client):
    done = run_xl(client, "kiln/ip-adapter-depth-xl", return_control_map=True)
    assert done["status"] == "succeeded", done["error"]

    enter_token(page, stack.base_url, TOKEN_A)
    page.goto(done["urls"]["web"])
    expect(page.locator("#gallery figure.output")).to_have_count(1)
    control_map = page.locator("#gallery figure.control-map")
    expect(control_map).to_contain_text("Control map")
    image = control_map.locator("img")
    # The page signs its own URL of the same file: its ``expires`` may fall in a later step.
    src = urlsplit(image.get_attribute("src") or "")
    assert src.path == urlsplit(done["output"][-1]).path
    assert "sig=" in src.query
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => img.naturalWidth") == 96


def test_history_pages_through_the_tokens_predictions_with_thumbnails(stack, page, client):
    created = [create(client, prompt=f"history entry {n}") for n in range(PAGE_SIZE + 1)]
    for prediction in created:
        wait_for_status(client, prediction["id"], TERMINAL)
    newest_first = [prediction["id"] for prediction in reversed(created)]

    enter_token(page, stack.base_url, TOKEN_A)
    page.get_by_role("link", name="History").click()
    entries = page.locator("#history a")
    expect(entries).to_have_count(PAGE_SIZE)
    links = [entries.nth(n).get_attribute("href") for n in range(PAGE_SIZE)]
    assert links == [f"/playground/predictions/{id_}" for id_ in newest_first[:PAGE_SIZE]]
    thumbnail = page.locator("#history img").first
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle())

    page.get_by_role("link", name="Older →").click()
    page.wait_for_url("**/history?cursor=*")
    expect(page.locator(f'#history a[href="/playground/predictions/{newest_first[PAGE_SIZE]}"]')).to_be_visible()
    page.get_by_role("link", name="← Newer").click()
    expect(page.locator(f'#history a[href="/playground/predictions/{newest_first[0]}"]')).to_be_visible()


def test_a_batch_page_shows_counts_progress_and_its_results_and_the_history_lists_it(stack, page, client):
    items = [{"version": "kiln/sd2-depth2img", "input": depth2img_input(seed=seed)} for seed in range(2)]
    batch = client.post("/v1/batches", json={"predictions": [*items, {"model": "kiln/nope", "input": {}}]}).json()
    wait_until(lambda: client.get(batch["urls"]["get"]).json()["status"] == "completed", 300, what="the batch")

    enter_token(page, stack.base_url, TOKEN_A)
    page.get_by_role("link", name="History").click()
    page.locator(f'#batches a[href="/playground/batches/{batch["id"]}"]').click()
    page.wait_for_url(f"**/playground/batches/{batch['id']}")
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator('[data-count="succeeded"]')).to_have_text("2")
    expect(page.locator('[data-count="invalid"]')).to_have_text("1")
    expect(page.locator("#progress-text")).to_have_text("2 / 2 ended")
    assert page.locator("#progress").evaluate("bar => bar.value === bar.max")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download results (JSONL)").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["succeeded", "succeeded", "invalid"]


class Mood(str, Enum):
    CALM = "calm"
    STORMY = "stormy"


class ChangedDepth2ImgInput(Depth2ImgInput):
    """depth2img's schema with other defaults, a narrower range and one more field."""

    num_inference_steps: int = Field(
        default=23, ge=1, le=500, description="Number of denoising steps.", json_schema_extra={"x-order": 5}
    )
    guidance_scale: float = Field(
        default=3.5,
        ge=1.0,
        le=12.0,
        description="Scale for classifier-free guidance.",
        json_schema_extra={"x-order": 6},
    )
    scheduler: Scheduler = Field(
        default=Scheduler.DDIM, description="Denoising scheduler.", json_schema_extra={"x-order": 7}
    )
    mood: Mood = Field(
        default=Mood.STORMY, description="A field only this schema has.", json_schema_extra={"x-order": 4.5}
    )


def form_state(page: Page, base_url: str) -> dict:
    page.goto(f"{base_url}/playground/models/kiln/sd2-depth2img")
    expect(page.locator("#prediction-form")).to_be_visible()
    return page.evaluate("""() => ({
        order: [...document.querySelectorAll('#fields label > code')].map(code => code.textContent),
        steps: document.getElementById('input-num_inference_steps').value,
        stepsSlider: document.getElementById('input-num_inference_steps-slider').value,
        guidance: document.getElementById('input-guidance_scale').value,
        guidanceMax: document.getElementById('input-guidance_scale-slider').max,
        scheduler: document.getElementById('input-scheduler').value,
        mood: document.getElementById('input-mood')?.value ?? null,
        moods: [...document.querySelectorAll('#input-mood option')].map(option => option.value),
    })""")


def test_the_form_is_generated_from_the_models_schema(stack, page, monkeypatch):
    enter_token(page, stack.base_url, TOKEN_A)
    shipped = form_state(page, stack.base_url)
    assert shipped["order"][:3] == ["prompt", "negative_prompt", "input_image"]
    assert (shipped["steps"], shipped["stepsSlider"], shipped["guidance"], shipped["guidanceMax"]) == (
        "50",
        "50",
        "7.5",
        "20",
    )
    assert (shipped["scheduler"], shipped["mood"]) == ("DPMSolverMultistep", None)

    spec = MODELS["kiln/sd2-depth2img"]
    monkeypatch.setitem(MODELS, spec.ref, dataclasses.replace(spec, input_model=ChangedDepth2ImgInput))
    with serve_in_thread(create_app(stack.settings(api_token=TOKEN_A))) as base_url:
        enter_token(page, base_url, TOKEN_A)
        changed = form_state(page, base_url)
    assert (changed["steps"], changed["stepsSlider"], changed["guidance"], changed["guidanceMax"]) == (
        "23",
        "23",
        "3.5",
        "12",
    )
    assert (changed["scheduler"], changed["mood"], changed["moods"]) == ("DDIM", "stormy", ["calm", "stormy"])
    assert changed["order"].index("mood") == changed["order"].index("num_inference_steps") - 1
