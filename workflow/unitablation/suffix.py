"""Cutting a network at a layer with torch.fx: the suffix (layer output -> logits) and its head.

The ablation engine replays only the part of the network after the studied layer. `split_suffix`
traces the model with the layer kept as a leaf, checks that everything after it depends on the
layer's output alone (a cut point), and returns that part as its own module. `analyse_head`
then looks for the cheap cases: a chain of channel-wise ops followed by one linear or conv op,
whose effect of removing one channel can be computed for all channels in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn


class NotACutPoint(ValueError):
    """The network after the layer also reads something computed before it (or fx cannot trace)."""


class _LeafTracer(fx.Tracer):
    """An fx tracer that keeps one named module as a leaf so its output is a single node."""

    def __init__(self, leaf: str) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name == self.leaf or super().is_leaf_module(module, qualified_name)


def _trace(model: nn.Module, layer: str) -> fx.GraphModule:
    tracer = _LeafTracer(layer)
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises many error types for untraceable code
        raise NotACutPoint(f"torch.fx cannot trace the model: {error}") from error
    return fx.GraphModule(tracer.root, graph)


def _layer_node(graph: fx.Graph, layer: str) -> fx.Node:
    nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(nodes) != 1:
        raise NotACutPoint(f"layer {layer} is called {len(nodes)} times in the traced graph")
    return nodes[0]


def _cut(graph_module: fx.GraphModule, start: fx.Node) -> fx.GraphModule:
    """A module computing the graph's output from `start`'s value alone, or NotACutPoint."""
    graph = graph_module.graph
    order = list(graph.nodes)
    position = order.index(start)
    depends_on_input = set()
    for node in order:
        if node.op == "placeholder" or any(arg in depends_on_input for arg in node.all_input_nodes):
            depends_on_input.add(node)
    downstream = {start}
    for node in order[position + 1 :]:
        if any(arg in downstream for arg in node.all_input_nodes):
            downstream.add(node)
    new_graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {start: new_graph.placeholder("activation")}
    for node in order[position + 1 :]:
        if node not in downstream and node.op != "output":
            continue
        for arg in node.all_input_nodes:
            if arg in mapping:
                continue
            if arg in depends_on_input:
                raise NotACutPoint(
                    f"{node.name} after the layer also reads {arg.name}, computed before it"
                )
            mapping[arg] = new_graph.node_copy(arg, lambda n: mapping[n])
        mapping[node] = new_graph.node_copy(node, lambda n: mapping[n])
    new_graph.lint()
    suffix = fx.GraphModule(graph_module, new_graph)
    suffix.eval()
    return suffix


def split_suffix(model: nn.Module, layer: str) -> fx.GraphModule:
    """The part of `model` after `layer`, as a module mapping the layer's output to the logits."""
    graph_module = _trace(model, layer)
    return _cut(graph_module, _layer_node(graph_module.graph, layer))


#: Modules that act on each element separately (in eval mode): ablating a channel before them
#: changes only that channel's entries after them, whether or not the map was flattened.
ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Identity,
)
#: Pooling acts on each channel separately; allowed before flattening only.
POOLING_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
ELEMENTWISE_FUNCTIONS = (torch.relu, torch.nn.functional.relu, torch.nn.functional.dropout)


@dataclass
class Head:
    """The suffix split as: channel-wise ops `pre` -> one linear/conv op `linear` -> `tail`.

    `tail` is None when the linear op's output is the network's output (a linear head: ablated
    logits in closed form). When `pre` flattens (N, C, h, w) to (N, C*h*w), channel u owns a
    contiguous block of the linear op's inputs.
    """

    pre: fx.GraphModule
    linear: nn.Linear | nn.Conv2d
    tail: fx.GraphModule | None


def _argument(node: fx.Node, index: int, name: str, default: object) -> object:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _is_flatten(node: fx.Node, owner: fx.GraphModule) -> bool:
    """Whether `node` flattens everything after the batch dimension."""
    if node.op == "call_function" and node.target is torch.flatten:
        return _argument(node, 1, "start_dim", 0) == 1 and _argument(node, 2, "end_dim", -1) == -1
    if node.op == "call_method" and node.target == "flatten":
        return _argument(node, 1, "start_dim", 0) == 1 and _argument(node, 2, "end_dim", -1) == -1
    if node.op == "call_module":
        module = owner.get_submodule(node.target)
        return isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1
    return False


def analyse_head(suffix: fx.GraphModule) -> Head | None:
    """Find element/channel-wise ops then one Linear/Conv2d right after the layer, else None."""
    placeholder = next(n for n in suffix.graph.nodes if n.op == "placeholder")
    node = placeholder
    chain: list[fx.Node] = []
    flattened = False
    while True:
        if len(node.users) != 1:
            return None
        node = next(iter(node.users))
        if len(node.all_input_nodes) != 1:
            return None
        if _is_flatten(node, suffix):
            if flattened:
                return None
            flattened = True
        elif node.op == "call_module":
            module = suffix.get_submodule(node.target)
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                break
            if isinstance(module, POOLING_MODULES) and flattened:
                return None
            if not isinstance(module, ELEMENTWISE_MODULES + POOLING_MODULES):
                return None
        elif node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS:
            pass
        else:
            return None
        chain.append(node)
    linear_node = node
    linear = suffix.get_submodule(linear_node.target)
    if isinstance(linear, nn.Conv2d) and (flattened or linear.groups != 1):
        return None
    pre_graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {placeholder: pre_graph.placeholder("activation")}
    for item in chain:
        mapping[item] = pre_graph.node_copy(item, lambda n: mapping[n])
    pre_graph.output(mapping[chain[-1]] if chain else mapping[placeholder])
    pre = fx.GraphModule(suffix, pre_graph)
    pre.eval()
    output_node = next(n for n in suffix.graph.nodes if n.op == "output")
    tail = None if output_node.args[0] is linear_node else _cut(suffix, linear_node)
    return Head(pre=pre, linear=linear, tail=tail)
