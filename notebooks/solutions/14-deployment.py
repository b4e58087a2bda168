"""Reference solution for the exercise of 14-deployment.ipynb (for instructors).

Check it in the notebook with ``qlab.exercises.check("14.1", unused_tensors)``.
"""


def unused_tensors(gm):
    # what the graph reads: get_attr targets, and everything inside a submodule it calls
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    called = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    names = [k for k, _ in [*gm.named_parameters(), *gm.named_buffers()]]
    return [k for k in names if k not in read and not any(k.startswith(c + ".") for c in called)]


SOLUTIONS = {"14.1": unused_tensors}
