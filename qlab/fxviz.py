"""Draw an FX graph with matplotlib (no graphviz): notebooks 05 (FX) and 06 (PT2E).

An ``torch.fx.GraphModule`` is a list of nodes in execution order; each node
reads the outputs of earlier nodes (``node.all_input_nodes``). Here every node
gets a *kind*, so a picture (and a test) can say what quantization did:

* ``input`` / ``output`` -- placeholders and the return node
* ``observer`` -- an observer or fake-quantize module (``prepare_fx``/``prepare_pt2e``)
* ``quantize`` / ``dequantize`` -- float -> int8 codes and back
  (``torch.quantize_per_tensor``, ``Tensor.dequantize``, ``quantized_decomposed.*``)
* ``int8 op`` -- a quantized module or kernel, or any op whose tensor inputs are
  all int8 (a max-pool on a quantized tensor stays int8)
* ``float op`` -- everything else

Parameters and constants (``get_attr`` nodes) are hidden: they are inputs, not steps.
"""

from __future__ import annotations

from collections import Counter

import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from ._checks import check_int

__all__ = ["KINDS", "COLORS", "node_kinds", "node_label", "graph_summary", "draw_graph", "draw_graphs"]

KINDS = ("input", "observer", "quantize", "dequantize", "int8 op", "float op", "output")
COLORS = {
    "input": "#d9d9d9",
    "output": "#d9d9d9",
    "observer": "#fdd49e",
    "quantize": "#9ecae1",
    "dequantize": "#c6dbef",
    "int8 op": "#74c476",
    "float op": "#ffffff",
}
_HIDDEN = {"_guards_fn"}  # torch.export's shape-guard call: bookkeeping, not computation


def _check_gm(name: str, gm) -> torch.fx.GraphModule:
    if isinstance(gm, torch.export.ExportedProgram):
        gm = gm.graph_module
    if not isinstance(gm, torch.fx.GraphModule):
        raise TypeError(
            f"{name} must be a torch.fx.GraphModule or torch.export.ExportedProgram, got {type(gm).__name__}"
        )
    return gm


def _is_observer(mod) -> bool:
    # torch.ao and torchao each define ObserverBase/FakeQuantizeBase; match both by name (no torchao import).
    return any(c.__name__ in ("ObserverBase", "FakeQuantizeBase") for c in type(mod).__mro__)


def _is_quantized_module(mod) -> bool:
    m = type(mod).__module__
    return m.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.nn.quantized"))


def _target_name(node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    if isinstance(t, torch._ops.OpOverload):
        return t._schema.name.split("::")[-1]  # aten::conv2d -> conv2d
    if isinstance(t, torch._ops.OpOverloadPacket):
        return t._qualified_op_name.split("::")[-1]
    return getattr(t, "__name__", str(t))


def _namespace(node) -> str:
    t = node.target
    if isinstance(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return getattr(t, "namespace", "") or str(t).split(".")[0]
    return ""


def node_kinds(gm) -> dict[torch.fx.Node, str]:
    """The kind (one of :data:`KINDS`) of every visible node, in graph order.

    ``int8`` is propagated: a node that is neither a quantized kernel nor a
    (de)quantize step is an ``int8 op`` when all its tensor inputs are int8.
    """
    gm = _check_gm("gm", gm)
    kinds: dict[torch.fx.Node, str] = {}
    int8: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            continue
        if node.op == "placeholder":
            kind = "input"
        elif node.op == "output":
            kind = "output"
        elif node.op == "call_module":
            if node.target in _HIDDEN:
                continue
            mod = gm.get_submodule(node.target)
            if _is_observer(mod):
                kind = "observer"
            elif _is_quantized_module(mod):
                kind = "int8 op"
            else:
                kind = None
        else:
            name = _target_name(node)
            ns = _namespace(node)
            if name.startswith("quantize_per") or name == "quantize":
                kind = "quantize"
            elif name.startswith("dequantize"):
                kind = "dequantize"
            elif ns in ("quantized", "onednn") and name.startswith("q"):
                kind = "int8 op"
            else:
                kind = None
        if kind is None:
            tensors = [a for a in node.all_input_nodes if a in kinds]
            kind = "int8 op" if tensors and all(a in int8 for a in tensors) else "float op"
        if kind in ("quantize", "int8 op"):
            int8.add(node)
        if kind == "observer" and node.all_input_nodes and all(a in int8 for a in node.all_input_nodes if a in kinds):
            int8.add(node)
        kinds[node] = kind
    return kinds


def node_label(gm, node: torch.fx.Node) -> str:
    """A short label: the module name and class for modules, the op name for functions."""
    gm = _check_gm("gm", gm)
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        cls = mod._get_name() if hasattr(mod, "_get_name") else type(mod).__name__
        return cls if _is_observer(mod) else f"{node.target}: {cls}"
    if node.op in ("placeholder", "output"):
        return node.op if node.op == "output" else node.name
    return _target_name(node)


def graph_summary(gm) -> dict:
    """``{"nodes", "edges", "kinds": {kind: count}}`` of the visible graph (what :func:`draw_graph` draws)."""
    kinds = node_kinds(gm)
    edges = sum(1 for n in kinds for a in n.all_input_nodes if a in kinds)
    counts = Counter(kinds.values())
    return {"nodes": len(kinds), "edges": edges, "kinds": {k: counts[k] for k in KINDS if counts[k]}}


def _layout_order(kinds: dict) -> list:
    """Graph order, except that a node with no visible input (a weight's dequantize, a constant) is
    moved to just before its first visible user, so its arrow is short."""
    nodes = list(kinds)
    floating = {n for n in nodes if n.op != "placeholder" and not any(a in kinds for a in n.all_input_nodes)}
    before: dict = {}
    for n in nodes:
        if n in floating:
            users = [u for u in nodes if n in u.all_input_nodes]
            before.setdefault(users[0] if users else None, []).append(n)
    order = []
    for n in nodes:
        if n not in floating:
            order.extend(before.get(n, []))
            order.append(n)
    order.extend(before.get(None, []))
    return order


def _draw_on(ax, gm, title: str | None, rows: int | None, fontsize: float) -> dict:
    kinds = node_kinds(gm)
    nodes = _layout_order(kinds)
    n = len(nodes)
    rows = rows or n
    cols = -(-n // rows)
    pos = {node: (i // rows, -(i % rows)) for i, node in enumerate(nodes)}
    w, h = 0.84, 0.62
    for node in nodes:
        x, y = pos[node]
        ax.add_patch(
            FancyBboxPatch(
                (x - w / 2, y - h / 2),
                w,
                h,
                boxstyle="round,pad=0.02,rounding_size=0.08",
                facecolor=COLORS[kinds[node]],
                edgecolor="#555555",
                linewidth=0.6,
            )
        )
        label = node_label(gm, node)
        if len(label) > 34:
            label = label[:33] + "…"
        ax.text(x, y, label, ha="center", va="center", fontsize=fontsize, clip_on=True)
    edges = []
    for node in nodes:
        for src in node.all_input_nodes:
            if src not in kinds:
                continue
            (x0, y0), (x1, y1) = pos[src], pos[node]
            edges.append((src.name, node.name))
            if x0 == x1 and y0 - y1 == 1:  # the next box down: a straight arrow
                a, b, style = (x0, y0 - h / 2), (x1, y1 + h / 2), "arc3"
            elif x0 == x1:  # a skip within the column: bend around the boxes
                a, b, style = (x0 + w / 2, y0), (x1 + w / 2, y1), "arc3,rad=-0.4"
            else:  # from the bottom of one column to the top of the next
                a, b, style = (x0 + w / 2, y0), (x1 - w / 2, y1), "arc3,rad=0.0"
            ax.add_patch(
                FancyArrowPatch(
                    a,
                    b,
                    arrowstyle="-|>",
                    mutation_scale=6,
                    linewidth=0.6,
                    color="#333333",
                    connectionstyle=style,
                    shrinkA=0,
                    shrinkB=0,
                )
            )
    ax.set_xlim(-0.55, cols - 0.45)
    ax.set_ylim(-rows + 0.4, 0.6)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=fontsize + 2)
    counts = Counter(kinds.values())
    return {
        "nodes": n,
        "edges": len(edges),
        "kinds": {k: counts[k] for k in KINDS if counts[k]},
        "labels": [node_label(gm, node) for node in nodes],
    }


def draw_graph(fig: Figure, gm, title: str | None = None, rows: int | None = None, fontsize: float = 6.5) -> dict:
    """Draw ``gm``'s nodes as coloured boxes (by kind) in execution order, top to bottom (a node
    without visible inputs, such as a weight's dequantize, just above its first user),
    wrapping into a new column every ``rows`` nodes, with an arrow per data edge.

    Returns what it drew: ``{"nodes", "edges", "kinds": {kind: count}, "labels": [...]}``.
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")
    gm = _check_gm("gm", gm)
    if rows is not None:
        check_int("rows", rows, 1)
    ax = fig.add_subplot(1, 1, 1)
    out = _draw_on(ax, gm, title, rows, fontsize)
    _legend(fig, out["kinds"])
    return out


def draw_graphs(fig: Figure, graphs: dict, rows: int | None = None, fontsize: float = 6.0) -> dict:
    """Several graphs side by side (e.g. traced / prepared / converted), one panel each.
    Returns ``{title: what draw_graph returns}``."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")
    if not isinstance(graphs, dict) or not graphs:
        raise TypeError("graphs must be a non-empty dict of title -> GraphModule")
    checked = {t: _check_gm(f"graphs[{t!r}]", g) for t, g in graphs.items()}
    n_rows = rows or max(len(node_kinds(g)) for g in checked.values())
    widths = [-(-len(node_kinds(g)) // n_rows) for g in checked.values()]
    axes = fig.subplots(1, len(checked), gridspec_kw={"width_ratios": widths}, squeeze=False)[0]
    out, seen = {}, Counter()
    for ax, (t, g) in zip(axes, checked.items(), strict=False):
        out[t] = _draw_on(ax, g, t, n_rows, fontsize)
        seen.update(out[t]["kinds"])
    _legend(fig, seen)
    return out


def _legend(fig: Figure, kinds) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=COLORS[k], edgecolor="#555555", label=k) for k in KINDS if k in kinds]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)
