"""Reading sm_90 SASS (``cuobjdump -sass`` text) for the kernel tests: instructions, and a check that no
register an asynchronous ``wgmma`` (``HGMMA``) reads as its A operand is written before the
``WARPGROUP.DEPBAR`` that retires it, on any path through the code (loops and branches included).

ptxas does not protect those registers: Triton's ``warpgroup_mma_wait(deps=...)`` keeps the 16-bit halves of a
register fragment alive, not the packed registers ``HGMMA`` takes, so a fragment rebuilt while the previous
``wgmma`` still runs can land in its registers (session 14, run 115: wrong sums).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*);")
_WIDE = {".64": 2, ".128": 4, ".WIDE": 2, ".X2": 2, ".X4": 4}


@dataclass(frozen=True)
class Ins:
    addr: int
    pred: bool  # guarded by a predicate (a branch that may fall through)
    op: str
    args: str


_OP = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_BACK = re.compile(r"/\*([0-9a-f]{4,})\*/\s+@!?U?P\w+\s+BRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))")


def backward_loops(sass: str) -> list[list[str]]:
    """The opcodes of every loop of ``sass``: the instructions from a predicated branch's earlier target up to
    the branch, one list per backward branch."""
    ops = [(int(a, 16), op) for a, op in _OP.findall(sass)]
    back = [(int(t, 16), int(a, 16)) for a, t in _BACK.findall(sass) if t]
    return [[op for a, op in ops if lo <= a <= hi] for lo, hi in back if lo < hi]


def instructions(sass: str) -> list[Ins]:
    """The instructions of ``sass`` in address order."""
    out = [Ins(int(a, 16), bool(p), op, args.strip()) for a, p, op, args in _LINE.findall(sass)]
    return sorted(out, key=lambda i: i.addr)


def written(ins: Ins) -> set[int]:
    """General registers ``ins`` writes (its first operand, when that is a register; wide forms write 2 or 4)."""
    if ins.op.startswith(("HGMMA", "ST", "RED", "BAR", "BRA", "SYNCS", "UTMA", "WARPGROUP")):
        return set()
    m = re.match(r"R(\d+)\b", ins.args)
    if not m:
        return set()
    n = max([w for s, w in _WIDE.items() if s in ins.op] + [4 if ins.op.startswith("LDSM") and ".MT88.4" in ins.op
                                                              else 1])
    return set(range(int(m.group(1)), int(m.group(1)) + n))


def _a_regs(ins: Ins) -> set[int]:
    m = re.match(r"R\d+, R(\d+), gdesc", ins.args)  # register A operand: 4 registers (64 x 16 fp16 / 128 threads)
    return set(range(int(m.group(1)), int(m.group(1)) + 4)) if m else set()


def _successors(code: list[Ins], i: int) -> list[int]:
    ins = code[i]
    nxt = [i + 1] if i + 1 < len(code) else []
    if ins.op == "EXIT" and not ins.pred:
        return []
    if ins.op == "BRA":
        m = re.match(r"(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", ins.args)
        tgt = [j for j, c in enumerate(code) if m and m.group(1) and c.addr == int(m.group(1), 16)]
        return tgt + (nxt if ins.pred else [])
    return nxt


def wgmma_register_hazards(sass: str) -> list[str]:
    """Where an instruction writes an A-operand register of an ``HGMMA`` group that may still be running: for
    each group (the ``HGMMA`` up to one marked ``gsb0``), every path from its last ``HGMMA`` is followed until a
    ``WARPGROUP.DEPBAR.LE gsb0, N`` leaves fewer than ``N + 1`` groups pending including it."""
    code = instructions(sass)
    bad = []
    group: set[int] = set()
    for i, ins in enumerate(code):
        if not ins.op.startswith("HGMMA"):
            continue
        group |= _a_regs(ins)
        if "gsb0" not in ins.args:
            continue
        regs, group = group, set()
        seen, todo = set(), [(j, 0) for j in _successors(code, i)]  # (instruction, newer groups issued)
        while todo:
            j, newer = todo.pop()
            if (j, newer) in seen:
                continue
            seen.add((j, newer))
            c = code[j]
            if c.op.startswith("WARPGROUP.DEPBAR") or (c.op == "WARPGROUP" and "DEPBAR" in c.args):
                m = re.search(r"gsb0, 0x(\d+)", c.args)
                if m and newer >= int(m.group(1), 16):
                    continue  # retired on this path
            hit = written(c) & regs
            if hit:
                bad.append(f"{c.addr:04x} {c.op} {c.args} writes R{min(hit)} of the HGMMA group ending at "
                           f"{ins.addr:04x}")
                continue
            if c.op.startswith("HGMMA") and "gsb0" in c.args:
                newer = min(newer + 1, 8)
            todo.extend((k, newer) for k in _successors(code, j))
    return bad
