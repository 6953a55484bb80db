"""What sim.py and run.py share: the scheduler list, how a label becomes (scheduler, options),
load-sized options, and markdown helpers.

A *label* is what a table row is called. It is a scheduler name from
``l7switch.balance.schedulers.SCHEDULERS`` except ``lard/r``, which is ``lard`` with ``replicate: true``
(LARD with replication, Pai et al. 1998 §2.3).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from l7switch.balance.schedulers import SCHEDULERS  # noqa: E402

#: Every label in table order (sh is left out on purpose: it keys on the client address, and all
#: our traffic comes from one client, so in the real bench it sends everything to one server).
ALL_LABELS = ("rr", "wrr", "lc", "wlc", "dh", "lblc", "lblcr", "lard", "lard/r", "chash", "maglev")
#: The LARD paper's comparison (WRR, static hashing "LB" = dh, LARD, LARD/R) plus IPVS's
#: locality schedulers and the two consistent hashes.
SWEEP_LABELS = ("wrr", "dh", "lard", "lard/r", "lblc", "chash", "maglev")
SKEW_LABELS = ("rr", "dh", "lard", "lard/r", "lblc", "lblcr", "chash", "maglev")

#: chash's bound on a server's load, as a multiple of the mean in-flight requests. HAProxy's
#: hash-balance-factor range is 125..200; at ~8 requests in flight per server 1.25 leaves about
#: two requests of headroom, which ordinary queue fluctuation exceeds all the time, and every
#: spill to the next server on the ring is a likely miss (README: "Option sizing").
BALANCE_FACTOR = 2.0


def base_name(label: str) -> str:
    return "lard" if label == "lard/r" else label


def sized_options(label: str, per_server_load: float) -> dict[str, Any]:
    """Options sized to the operating point: ``per_server_load`` (L) is the mean number of
    requests in flight per server (clients / servers in a closed loop).

    LARD's T_low/T_high and LBLC's capacity are absolute request counts, so the defaults (25/65,
    65: the paper's, for its back-ends) either never trigger at a few requests per server
    (everything stays where it first landed: static hashing with a load-based first placement)
    or, set near L, trigger on ordinary queue noise and move keys (each move is a cold cache).
    Here: T_low = L/2 (a server with half the mean has idle capacity), T_high = capacity = 2·L
    (twice the mean is a real hot spot). The simulator's sensitivity runs (README) found 2·L
    better than 1.5·L / L on every workload tried, with max/mean load still <= ~1.2.
    """
    load = max(1.0, per_server_load)
    name = base_name(label)
    opts: dict[str, Any] = {}
    if name == "lard":
        opts["t_low"] = max(1, round(load / 2))
        opts["t_high"] = max(opts["t_low"] + 1, round(2 * load))
        if label == "lard/r":
            opts["replicate"] = True
    elif name in ("lblc", "lblcr"):
        opts["capacity"] = max(1, round(2 * load))
    elif name == "chash":
        opts["balance_factor"] = BALANCE_FACTOR
    return opts


def resolve(label: str, per_server_load: float, sized: bool = True,
            overrides: dict[str, dict[str, Any]] | None = None
            ) -> tuple[str, dict[str, Any], list[str]]:
    """(scheduler name, options it accepts, notes). Options the scheduler does not declare are
    dropped with a note instead of failing, so the bench keeps working while schedulers evolve.
    With ``sized=False`` only ``replicate`` (what makes lard/r) is passed: the scheduler's own
    defaults apply. ``overrides`` ({label: {option: value}}, from --option) win over both."""
    name = base_name(label)
    cls = SCHEDULERS[name]
    opts, notes = {}, []
    wanted = sized_options(label, per_server_load)
    if not sized:
        wanted = {k: v for k, v in wanted.items() if k == "replicate"}
    wanted.update((overrides or {}).get(label, {}))
    for k, v in wanted.items():
        if k in cls.options:
            opts[k] = v
        else:
            notes.append(f"{label}: option {k}={v!r} not accepted by {name}; left out")
    return name, opts, notes


def available(labels: list[str]) -> tuple[list[str], list[str]]:
    """(labels whose scheduler exists, notes for the missing ones)."""
    ok, notes = [], []
    for lab in labels:
        if base_name(lab) in SCHEDULERS:
            ok.append(lab)
        else:
            notes.append(f"{lab}: skipped, no scheduler {base_name(lab)!r} in l7switch.balance.schedulers "
                         f"(have: {', '.join(sorted(SCHEDULERS))})")
    return ok, notes


def parse_labels(text: str) -> list[str]:
    labels = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [lab for lab in labels if base_name(lab) not in ALL_LABELS and base_name(lab) not in SCHEDULERS
           and base_name(lab) != "sh"]
    if bad:
        raise SystemExit(f"error: unknown scheduler label(s): {', '.join(bad)} "
                         f"(known: {', '.join(ALL_LABELS)}, sh)")
    return labels


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["lard.t_high=16", "chash.balance_factor=1.5"]`` -> {label: {option: value}}; values are
    read as YAML would (int, float, true/false, else text)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, eq, raw = item.partition("=")
        label, dot, opt = head.rpartition(".")
        if not eq or not dot or not label or not opt:
            raise SystemExit(f"error: --option {item!r}: expected LABEL.OPTION=VALUE, e.g. lard.t_high=16")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for conv in (int, float):
                try:
                    value = conv(raw)
                    break
                except ValueError:
                    pass
        out.setdefault(label.lower(), {})[opt] = value
    return out


def fmt_opts(opts: dict[str, Any]) -> str:
    if not opts:
        return "–"
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in opts.items())


def md_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or ("l" + "r" * (len(header) - 1))
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}×"
