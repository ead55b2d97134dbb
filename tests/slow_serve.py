"""`qwen3-lora serve` whose every model call sleeps first, for the admission-limit tests:
`python tests/slow_serve.py DELAY_MS <serve flags>`. A test-only subclass of the runner, so the
delay never exists in the product."""

from __future__ import annotations

import os
import sys
import time

from qwen3_lora.cli import build_parser
from qwen3_lora.deploy.serve import ModelRunner, create_app
from qwen3_lora.deploy.serve.main import check_settings, load_predictor, run_app, warm_up
from qwen3_lora.deploy.serve.settings import config_from_arguments


class SlowRunner(ModelRunner):
    """Model work starts `delay_s` late, so a test can fill the queue and hit the timeout."""

    delay_s = 0.0

    def on_model_thread(self, fn):
        time.sleep(self.delay_s)
        return fn()


def main(argv: list[str]) -> None:
    SlowRunner.delay_s = float(argv[0]) / 1000
    config = config_from_arguments(build_parser().parse_args(["serve", *argv[1:]]), os.environ)
    check_settings(config)
    predictor = load_predictor(config)
    warm_up(predictor)
    run_app(create_app(predictor, config, SlowRunner(predictor, config)), predictor, config)


if __name__ == "__main__":
    main(sys.argv[1:])
