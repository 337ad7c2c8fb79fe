"""agentrl environments: single-turn math, Search-R1 style multi-hop QA and tool environments.

Importing the package registers the `agentrl/...` gymnasium ids (see `environments.registration`), so
`gymnasium.make("agentrl/SearchQA-v0")` works after `import environments`. The contract every environment
follows is documented in `environments.base`.
"""

from environments.registration import ENVIRONMENTS, register_all

register_all()

__all__ = ["ENVIRONMENTS", "register_all"]
