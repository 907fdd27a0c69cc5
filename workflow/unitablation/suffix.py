"""Cutting a network at a layer with torch.fx: the suffix (layer output -> logits) and its head.

The ablation engine replays only the part of the network after the studied layer. `split_suffix`
traces the model with the layer kept as a leaf, checks that everything after it depends on the
layer's output alone (a cut point), and returns that part as its own module. `analyse_head`
then looks for the cheap cases: a chain of channel-wise ops followed by one linear or conv op,
whose effect of removing one channel can be computed for all channels in one pass.
"""

from __future__ import annotations

import operator
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


def _has_default(node: fx.Node) -> bool:
    """Whether `node` is a forward() argument with a default value (timm's `attn_mask=None`).

    Such an argument is not the image: replaying the suffix with its default is what a plain
    `model(images)` does, so the suffix keeps it as an argument with the same default.
    """
    return node.op == "placeholder" and len(node.args) > 0


class _SuffixGraph:
    """The graph being built for a cut: nodes copied from the traced graph, keyed by original."""

    def __init__(self, start: fx.Node) -> None:
        self.graph = fx.Graph()
        self.last_placeholder = self.graph.placeholder("activation")
        self.mapping: dict[fx.Node, fx.Node] = {start: self.last_placeholder}

    def copy(self, node: fx.Node) -> fx.Node:
        """Copy `node` (its inputs already copied); placeholders stay ahead of other nodes."""
        if node.op != "placeholder":
            self.mapping[node] = self.graph.node_copy(node, lambda n: self.mapping[n])
            return self.mapping[node]
        with self.graph.inserting_after(self.last_placeholder):
            self.last_placeholder = self.graph.node_copy(node, lambda n: self.mapping[n])
        self.mapping[node] = self.last_placeholder
        return self.last_placeholder

    def copy_constant(self, node: fx.Node) -> None:
        """Copy a node that does not depend on the image, with whatever it reads, in order."""
        for arg in node.all_input_nodes:
            if arg not in self.mapping:
                self.copy_constant(arg)
        self.copy(node)


def _cut(graph_module: fx.GraphModule, start: fx.Node) -> fx.GraphModule:
    """A module computing the graph's output from `start`'s value alone, or NotACutPoint.

    Arguments of the model's forward() that have a default value are not inputs computed
    before the layer: the suffix keeps them (as arguments with the same default).
    """
    graph = graph_module.graph
    order = list(graph.nodes)
    position = order.index(start)
    depends_on_input = set()
    for node in order:
        image_input = node.op == "placeholder" and not _has_default(node)
        if image_input or any(arg in depends_on_input for arg in node.all_input_nodes):
            depends_on_input.add(node)
    downstream = {start}
    for node in order[position + 1 :]:
        if any(arg in downstream for arg in node.all_input_nodes):
            downstream.add(node)
    built = _SuffixGraph(start)
    for node in order[position + 1 :]:
        if node not in downstream and node.op != "output":
            continue
        for arg in node.all_input_nodes:
            if arg in built.mapping:
                continue
            if arg in depends_on_input:
                raise NotACutPoint(
                    f"{node.name} after the layer also reads {arg.name}, computed before it "
                    "(e.g. a residual connection around the layer, as inside a ResNet or ViT "
                    "block), so the rest of the network is no function of the layer's output alone"
                )
            built.copy_constant(arg)
        built.copy(node)
    new_graph = built.graph
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


def _batch_statistics(module: nn.Module) -> bool:
    """Whether a batch norm normalises with the batch's own statistics even in eval mode."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None


def _chain_obstacle(node: fx.Node, owner: fx.GraphModule, flattened: bool) -> str:
    """Why `node` cannot stand between the layer and the linear op ('' when it can)."""
    if node.op == "call_module":
        module = owner.get_submodule(node.target)
        if _batch_statistics(module):
            return (
                f"batch norm {node.target} has track_running_stats=False: in eval mode it "
                "normalises with batch statistics, which mix the images and the channels' effects"
            )
        if isinstance(module, POOLING_MODULES) and flattened:
            return f"pooling {node.target} after flattening mixes channels"
        if not isinstance(module, ELEMENTWISE_MODULES + POOLING_MODULES):
            return f"{node.target} ({type(module).__name__}) is not channel-wise"
        return ""
    if node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS:
        if node.target is torch.nn.functional.dropout and _argument(node, 2, "training", True):
            return (
                f"functional dropout {node.name} is called without training=False, so it drops "
                "at random even in eval mode"
            )
        return ""
    target = getattr(node.target, "__name__", node.target)
    return f"{node.name} ({node.op} {target}) is not channel-wise"


def explain_head(suffix: fx.GraphModule) -> tuple[Head | None, str]:
    """The head (element/channel-wise ops then one Linear/Conv2d right after the layer), or None
    and the reason there is none."""
    placeholder = next(n for n in suffix.graph.nodes if n.op == "placeholder")
    node = placeholder
    chain: list[fx.Node] = []
    flattened = False
    while True:
        if len(node.users) != 1:
            return None, f"{node.name} is read by {len(node.users)} ops"
        node = next(iter(node.users))
        if len(node.all_input_nodes) != 1:
            return None, f"{node.name} reads {len(node.all_input_nodes)} tensors"
        if _is_flatten(node, suffix):
            if flattened:
                return None, f"{node.name} flattens a second time"
            flattened = True
        elif node.op == "call_module" and isinstance(
            suffix.get_submodule(node.target), (nn.Linear, nn.Conv2d)
        ):
            break
        else:
            obstacle = _chain_obstacle(node, suffix, flattened)
            if obstacle:
                return None, obstacle
        chain.append(node)
    linear_node = node
    linear = suffix.get_submodule(linear_node.target)
    if isinstance(linear, nn.Conv2d) and (flattened or linear.groups != 1):
        return None, f"conv {linear_node.target} is grouped or reads a flattened input"
    pre_graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {placeholder: pre_graph.placeholder("activation")}
    for item in chain:
        mapping[item] = pre_graph.node_copy(item, lambda n: mapping[n])
    pre_graph.output(mapping[chain[-1]] if chain else mapping[placeholder])
    pre = fx.GraphModule(suffix, pre_graph)
    pre.eval()
    output_node = next(n for n in suffix.graph.nodes if n.op == "output")
    tail = None if output_node.args[0] is linear_node else _cut(suffix, linear_node)
    return Head(pre=pre, linear=linear, tail=tail), ""


def analyse_head(suffix: fx.GraphModule) -> Head | None:
    """Find element/channel-wise ops then one Linear/Conv2d right after the layer, else None."""
    return explain_head(suffix)[0]


#: Functions that write into their first argument, besides names ending in "_" (relu_, add_).
INPLACE_FUNCTIONS = (operator.iadd, operator.isub, operator.imul, operator.itruediv)
#: Functions with an `inplace` argument, and its position.
INPLACE_ARGUMENT = {torch.nn.functional.relu: 1, torch.nn.functional.dropout: 3}


def _writes_in_place(node: fx.Node, owner: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return bool(getattr(owner.get_submodule(node.target), "inplace", False))
    if node.op not in ("call_function", "call_method"):
        return False
    if node.target in INPLACE_FUNCTIONS:
        return True
    if node.op == "call_function" and node.target in INPLACE_ARGUMENT:
        return bool(_argument(node, INPLACE_ARGUMENT[node.target], "inplace", False))
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return bool(node.kwargs.get("inplace")) or (name.endswith("_") and not name.startswith("_"))


def has_inplace_ops(graph_module: fx.GraphModule) -> bool:
    """Whether any op of the graph may write into a tensor it reads (e.g. ReLU(inplace=True))."""
    return any(_writes_in_place(node, graph_module) for node in graph_module.graph.nodes)
