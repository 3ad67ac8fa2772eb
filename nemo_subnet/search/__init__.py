"""Sub-network search under a parameter budget: spaces (YAML), strategies (ask/tell), objective, runner.

``run_search(SearchConfig) -> SearchResult`` is the Python entry point, ``nemo-subnet search`` the CLI;
``search_loop`` runs any strategy against any objective ``SubnetConfig -> float``, with successive halving
over evaluation tokens (fidelity.py) and a family of budgets in one run. See docs/search.md.
"""

from nemo_subnet.search.loop import SearchResult, search_loop
from nemo_subnet.search.objective import EvalForward
from nemo_subnet.search.runner import EvalConfig, SearchConfig, run_search
from nemo_subnet.search.space import (Budget, BudgetFamily, Granularity, Ordering, ResolvedSpace, SearchSpace, SearchSpaceError,
                                      check_budget, resolve_space)
from nemo_subnet.search.strategies import (EvolutionarySearch, ProxySearch, RandomSearch, Strategy, StrategyConfig,
                                           StrategyName, make_strategy)

__all__ = [
    "Budget", "BudgetFamily", "EvalConfig", "EvalForward", "EvolutionarySearch", "Granularity", "Ordering", "ProxySearch",
    "RandomSearch", "ResolvedSpace", "SearchConfig", "SearchResult", "SearchSpace", "SearchSpaceError", "Strategy", "StrategyConfig",
    "StrategyName", "check_budget", "make_strategy", "resolve_space", "run_search", "search_loop",
]
