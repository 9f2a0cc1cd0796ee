"""The ``config.yaml`` of a LiteLLM proxy under test (written as JSON, which YAML reads as is).

Every deployment has a price per token, so LiteLLM's logging payload carries each leg's cost, and
the proxy loads ``tests.support.litellm_support.recorder`` as a callback and never retries. Nothing here
imports LiteLLM.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Deployment:
    model: str
    """LiteLLM's model string, e.g. ``hosted_vllm/exec-m`` (the backend sees ``exec-m``)."""
    api_base: str
    api_key: str
    prices: tuple[float, float]
    """USD per input token, per output token."""


def write_config(
    path: Path,
    deployments: Mapping[str, Deployment],
    *,
    master_key: str,
    general_settings: Mapping[str, Any] | None = None,
    litellm_settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write the config serving ``deployments`` (model group -> deployment) to ``path``."""
    model_list = [
        {
            "model_name": group,
            "litellm_params": {
                "model": d.model,
                "api_base": d.api_base,
                "api_key": d.api_key,
                "input_cost_per_token": d.prices[0],
                "output_cost_per_token": d.prices[1],
            },
        }
        for group, d in deployments.items()
    ]
    config = {
        "model_list": model_list,
        "router_settings": {"num_retries": 0},
        "litellm_settings": {"callbacks": "tests.support.litellm_support.recorder", **(litellm_settings or {})},
        "general_settings": {"master_key": master_key, **(general_settings or {})},
    }
    path.write_text(json.dumps(config, indent=2))
    return path
