"""The fused graph's networks run side by side: OpenVINO's CPU plugin runs a graph's nodes
one after another, each spread over every thread, so the threads meet at every node. The
fused graph holds six independent networks (five members and the CAM network); grouped
into as many parts as there are thread groups, each part compiled on its own threads, they
run at once and meet only at the end. Measured on 2 Zen 4 cores in bf16, against the graph
whole on both threads (bench/results/amd-epyc-2core-2026-11-26-1930.md): 65 vs 82 ms at
batch 1, 59 vs 63 ms per image at batch 8, the same outputs. The weights are the same
tensors split, not copied.

The split follows the contract (server/runtime/contract.py): the member rows that the
`member_probabilities` Concat joins, the weighted sum that makes `probabilities`, and the
CAM network's outputs. The join is redone here in float32: Concat, times the graph's
`ensemble_weights`, summed over members. A graph of another shape is not split (`plan`
says why), and then runs whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from server.runtime import contract

# What a part's cost is counted in: multiply-accumulates of these operations, per image.
_HEAVY = {"Convolution", "GroupConvolution", "MatMul"}
_PASS = {"Identity", "Convert"}  # between a network's tensor and the graph's Result


@dataclass(frozen=True)
class Plan:
    rows: tuple[str, ...]  # the member rows' tensors, in member order: [N, 1, findings]
    weights: np.ndarray  # [1, members, findings], the graph's ensemble_weights
    passed: dict[str, str]  # output name -> the tensor it is (the CAM network's outputs)
    parts: tuple[tuple[str, ...], ...]  # tensors each part computes
    costs: tuple[int, ...]  # each part's multiply-accumulates per image

    def combine(self, heads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The parts' tensors -> the contract's outputs, as the fused graph joins them."""
        members = np.concatenate([heads[r] for r in self.rows], axis=1)
        out = {
            contract.MEMBER_PROBABILITIES: members,
            contract.PROBABILITIES: (members * self.weights).sum(axis=1, dtype=np.float32),
        }
        for name, tensor in self.passed.items():
            out[name] = np.asarray(heads[tensor], np.float32)
        return out


class NotSplit(ValueError):
    """Why a graph runs whole."""


def _producer(output: ov.Output) -> ov.Output:
    """The tensor behind pass-through nodes."""
    while output.get_node().get_type_name() in _PASS:
        output = output.get_node().input_value(0)
    return output


def _name(output: ov.Output) -> str:
    names = sorted(output.get_names())
    if not names:
        raise NotSplit(f"{output.get_node().get_friendly_name()} has no tensor name")
    return names[0]


def _ancestors(output: ov.Output) -> set[int]:
    """The instance ids of every node a tensor depends on (Python wrappers of one node
    differ; its instance id does not)."""
    seen: set[int] = set()
    stack = [output.get_node()]
    while stack:
        node = stack.pop()
        if node.get_instance_id() in seen:
            continue
        seen.add(node.get_instance_id())
        stack.extend(v.get_node() for v in node.input_values())
    return seen


def _macs(node: ov.Node) -> int:
    """Multiply-accumulates per image of a convolution or matrix product (0 where its shapes
    are not known ahead)."""
    out, weights = node.get_output_partial_shape(0), node.get_input_partial_shape(1)
    if not (out.rank.is_static and weights.is_static) or not all(
        d.is_static for d in list(out)[2:]
    ):
        return 0
    w = [d.get_length() for d in weights]
    if node.get_type_name() == "MatMul":
        return int(np.prod(w[-2:]))
    spatial = [d.get_length() for d in list(out)[2:]]
    return int(np.prod(spatial)) * int(np.prod(w))


def _heavy(model: ov.Model) -> dict[int, int]:
    """Convolutions and matrix products by instance id -> their cost (1 when unknown)."""
    return {
        node.get_instance_id(): _macs(node) or 1
        for node in model.get_ordered_ops()
        if node.get_type_name() in _HEAVY
    }


def plan(model: ov.Model, parts: int) -> Plan:
    """How to run `model` as `parts` parts side by side; NotSplit says why it cannot be."""
    results = {}
    for r in model.get_results():
        results[_name(r.output(0))] = r.input_value(0)
    missing = [n for n in contract.OUTPUTS if n not in results]
    if missing:
        raise NotSplit(f"no output {missing}")
    concat = _producer(results[contract.MEMBER_PROBABILITIES]).get_node()
    if concat.get_type_name() != "Concat" or concat.get_attributes().get("axis") != 1:
        raise NotSplit(f"{contract.MEMBER_PROBABILITIES} is not a Concat of member rows")
    rows = list(concat.input_values())
    weights = _weighted_sum(_producer(results[contract.PROBABILITIES]).get_node(), concat)
    passed = {
        name: _producer(results[name])
        for name in contract.OUTPUTS
        if name not in (contract.PROBABILITIES, contract.MEMBER_PROBABILITIES)
    }
    heads = {_name(o): o for o in [*rows, *passed.values()]}
    # Heads that share a convolution are one network (the CAM network's two outputs).
    heavy = _heavy(model)
    networks: list[tuple[set[str], set[int]]] = []
    for name, output in heads.items():
        mine = _ancestors(output) & heavy.keys()
        joined = [n for n in networks if n[1] & mine]
        names = {name}.union(*(n[0] for n in joined))
        mine = mine.union(*(n[1] for n in joined))
        networks = [n for n in networks if n not in joined] + [(names, mine)]
    if len(networks) < parts:
        raise NotSplit(f"{len(networks)} independent networks for {parts} parts")
    order = list(heads)  # within a part, the graph's order
    groups = _balance([(list(n[0]), sum(heavy[k] for k in n[1])) for n in networks], parts)
    return Plan(
        rows=tuple(_name(r) for r in rows),
        weights=weights,
        passed={name: _name(o) for name, o in passed.items()},
        parts=tuple(tuple(sorted(g[0], key=order.index)) for g in groups),
        costs=tuple(g[1] for g in groups),
    )


def _weighted_sum(node: ov.Node, concat: ov.Node) -> np.ndarray:
    """The ensemble weights of ReduceSum(Multiply(member rows, weights), axis 1)."""
    if node.get_type_name() != "ReduceSum" or node.get_attributes().get("keep_dims"):
        raise NotSplit(f"{contract.PROBABILITIES} is not a sum over members")
    axes = node.input_value(1).get_node()
    if axes.get_type_name() != "Constant" or list(axes.get_data().ravel()) != [1]:
        raise NotSplit(f"{contract.PROBABILITIES} sums over another axis than the members")
    product = node.input_value(0).get_node()
    if product.get_type_name() != "Multiply":
        raise NotSplit(f"{contract.PROBABILITIES} is not a weighted sum")
    a, b = (v.get_node() for v in product.input_values())
    if a.get_type_name() == "Constant":
        a, b = b, a
    if a.get_instance_id() != concat.get_instance_id():
        raise NotSplit(f"{contract.PROBABILITIES} does not weigh {contract.MEMBER_PROBABILITIES}")
    if b.get_type_name() != "Constant":
        raise NotSplit(f"{contract.WEIGHTS_INITIALIZER} is not a constant")
    weights = np.asarray(b.get_data(), np.float32)
    if weights.ndim != 3 or weights.shape[:2] != (1, len(concat.input_values())):
        raise NotSplit(f"{contract.WEIGHTS_INITIALIZER} has shape {weights.shape}")
    return weights


def _balance(networks: Iterable[tuple[list[str], int]], parts: int) -> list[tuple[list[str], int]]:
    """Longest first, each to the lightest part so far: within 4/3 of the best split."""
    groups: list[tuple[list[str], int]] = [([], 0) for _ in range(parts)]
    for names, cost in sorted(networks, key=lambda n: -n[1]):
        i = min(range(parts), key=lambda k: groups[k][1])
        groups[i] = (groups[i][0] + names, groups[i][1] + cost)
    return groups


def submodels(model: ov.Model, plan: Plan) -> list[ov.Model]:
    """One model per part, on the graph's own input: what each part computes, only."""
    outputs = {}
    for node in model.get_ordered_ops():
        for o in node.outputs():
            for n in o.get_names():
                outputs[n] = o
    return [
        ov.Model([ops.result(outputs[t]) for t in part], model.get_parameters(), f"part{i}")
        for i, part in enumerate(plan.parts)
    ]
