"""The predictor contract's docstring carries a runnable minimal predictor: the doctest runs it, and
this drives the same class the way the runner does (batch keys, prepare per prediction, one
``generate`` for a group), so the example cannot drift from the contract."""

from __future__ import annotations

import doctest

from models.kit import contract
from tests.support.fakes import FakeContext


def run_the_example() -> dict:
    """Run the module docstring's doctest; returns the names it defined."""
    [example] = [test for test in doctest.DocTestFinder().find(contract) if test.name == contract.__name__]
    result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(example, clear_globs=False)
    assert result.attempted > 0, "the contract's docstring has no example"
    assert result.failed == 0, f"{result.failed} of the example's lines failed"
    return example.globs


def test_the_contract_docstring_example_runs() -> None:
    run_the_example()


def test_the_example_predictor_batches_and_generates_as_the_runner_drives_it() -> None:
    names = run_the_example()
    predictor = names["Flat"](names["Settings"]())
    predictor.setup()
    inputs = [names["Inputs"](colour="red", seed=1), names["Inputs"](colour="blue", seed=2)]
    assert predictor.batch_key(inputs[0]) == predictor.batch_key(inputs[1])
    ctx = FakeContext()
    jobs = [predictor.prepare(one, ctx) for one in inputs]
    assert ctx.lines == ["Using seed: 1", "Using seed: 2"]
    assert jobs[0].group_key == jobs[1].group_key
    outputs = predictor.generate(jobs, ctx.step_callback())
    assert [[image.getpixel((0, 0)) for image in job] for job in outputs] == [[(255, 0, 0)], [(0, 0, 255)]]
    assert ctx.steps == 1
