"""The shape of a workflow for display: processes in order, tasks in chain order, parallel branches.

Built from the workflow's nodes alone (:func:`dagger_django.engine.selectors.workflow_nodes`, one
query), so the admin can show any workflow, even one whose template or task classes are gone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .engine import selectors
from .models import NodeKind


@dataclass
class GraphNode:
    node: selectors.NodeInfo
    #: For a process: its chain of tasks. For a parallel group: one chain per branch.
    chain: list[GraphNode] = field(default_factory=list)
    branches: list[list[GraphNode]] = field(default_factory=list)
    #: Successors that are alternatives to the chain's next step (decision branches).
    alternatives: list[list[GraphNode]] = field(default_factory=list)

    @property
    def short_name(self) -> str:
        return self.node.name.rsplit(".", 1)[-1]

    @property
    def css(self) -> str:
        return self.node.status.lower()


def workflow_graph(workflow_id: Any) -> list[GraphNode]:
    """The top-level chain of a workflow (processes and process-level groups), nested."""
    return graph_of(selectors.workflow_nodes(workflow_id=workflow_id))


def graph_of(nodes: Iterable[selectors.NodeInfo]) -> list[GraphNode]:
    """The top-level chain of the workflow whose nodes (all of them, in position order) these are."""
    by_id = {n.id: n for n in nodes}
    roots = [n for n in by_id.values() if n.parent_id is None]
    has_predecessor = {i for n in by_id.values() for i in n.next_ids}
    heads = [n for n in roots if n.id not in has_predecessor]
    seen: set[uuid.UUID] = set()
    out: list[GraphNode] = []
    for head in heads:
        out.extend(_chain(head, by_id, seen))
    return out


def _chain(
    start: selectors.NodeInfo, nodes: dict[uuid.UUID, selectors.NodeInfo], seen: set[uuid.UUID]
) -> list[GraphNode]:
    chain: list[GraphNode] = []
    current: selectors.NodeInfo | None = start
    while current is not None and current.id not in seen:
        seen.add(current.id)
        item = GraphNode(current)
        children = [nodes[c] for c in current.child_ids if c in nodes]
        if current.kind == NodeKind.PARALLEL:
            item.branches = [_chain(c, nodes, seen) for c in children]
        elif children:
            item.chain = _chain(children[0], nodes, seen)
        chain.append(item)
        successors = [nodes[i] for i in current.next_ids if i in nodes]
        if len(successors) > 1:
            item.alternatives = [_chain(s, nodes, seen) for s in successors]
            current = None
        else:
            current = successors[0] if successors else None
    return chain
