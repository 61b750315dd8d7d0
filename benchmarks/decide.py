from __future__ import annotations

from typing import Any

from dagger_django import DecisionTask


class First(DecisionTask):
    def evaluate(self, **kwargs: Any) -> Any:
        return self.next_dags[0]
