"""Registering agentrl environments with gymnasium (runs on `import environments`).

`ENVIRONMENTS` maps each id to its entry point so the ids can be listed and looked up with close-name hints;
`register_all` makes each id available to `gymnasium.make`. Registration is idempotent.
"""

from __future__ import annotations

import gymnasium as gym

from agentrl.core.registry import Registry

ENVIRONMENTS: Registry[str] = Registry("environment")
ENVIRONMENTS.add("agentrl/Math-v0", "environments.math_env:MathEnv")
ENVIRONMENTS.add("agentrl/SearchQA-v0", "environments.search_env:SearchQAEnv")
ENVIRONMENTS.add("agentrl/Calculator-v0", "environments.calculator:CalculatorEnv")
ENVIRONMENTS.add("agentrl/PythonTool-v0", "environments.python_tool:PythonToolEnv")


def register_all() -> list[str]:
    """Register every id in `ENVIRONMENTS` with gymnasium (skipping registered ones); return the ids."""
    for env_id, entry_point in ENVIRONMENTS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point)
    return ENVIRONMENTS.names()
