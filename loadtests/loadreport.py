"""Reading a locust run's CSV reports back: a results table, and whether the run passed.

run.py calls it after locust exits; tests/pure/test_loadreport.py feeds it CSV text. A run
passes only when it made requests, none failed, the locustfile raised nothing, and every
scenario that had users made its requests: a run that silently did nothing must not pass.
"""

from __future__ import annotations

import ast
import csv
import io
from dataclasses import dataclass
from pathlib import Path

# A request name each scenario makes on every iteration: a run whose users of that class made
# none lost the scenario (a task that returns early, a renamed path) without failing a request.
SCENARIOS = {
    "PageVisitor": "/gallery.html",
    "FormPoster": "/cgi-bin/form",
    "LoggedInUser": "/app/account",
    "Downloader": "/files/",
}


@dataclass(frozen=True)
class Row:
    method: str
    name: str
    requests: int
    failures: int
    median: float
    average: float
    p95: float
    p99: float
    max: float
    rps: float


def _num(value: str) -> float:
    return float(value) if value not in ("", "N/A") else 0.0


def read_stats(text: str) -> list[Row]:
    """Rows of locust's ``<prefix>_stats.csv``; the last one is the "Aggregated" total."""
    return [Row(r["Type"], r["Name"], int(r["Request Count"]), int(r["Failure Count"]),
                _num(r["Median Response Time"]), _num(r["Average Response Time"]), _num(r["95%"]),
                _num(r["99%"]), _num(r["Max Response Time"]), _num(r["Requests/s"]))
            for r in csv.DictReader(io.StringIO(text))]


def read_rows(path: Path) -> list[dict[str, str]]:
    """Any of locust's CSV files (failures, exceptions) as dicts; none if it was not written."""
    return list(csv.DictReader(io.StringIO(path.read_text()))) if path.exists() else []


def ms(value: float) -> str:
    # locust keeps times below 100 ms to the millisecond; a tenth shows the sub-ms ones.
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def table(rows: list[Row]) -> str:
    """A Markdown table of the run, one line per request name and the total last."""
    lines = ["| request | reqs | fails | req/s | median ms | avg ms | 95% ms | 99% ms | max ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = "**all**" if r.name == "Aggregated" else f"{r.method} {r.name}".replace("|", "\\|")
        lines.append(f"| {name} | {r.requests:,} | {r.failures:,} | {r.rps:,.1f} | {ms(r.median)} | "
                     f"{ms(r.average)} | {ms(r.p95)} | {ms(r.p99)} | {ms(r.max)} |")
    return "\n".join(lines)


def error_text(error: str) -> str:
    """locust's failure text without its wrapper: CatchResponseError('x') -> x."""
    head, _, rest = error.partition("(")
    if head == "CatchResponseError" and rest.endswith(")"):
        try:
            inner = ast.literal_eval(rest[:-1])
        except (ValueError, SyntaxError):
            return error
        return inner if isinstance(inner, str) else error
    return error


def classes_run(users: list[dict[str, str]]) -> list[str]:
    """The user classes that had users (from ``<prefix>_users_final.csv``)."""
    return [u["Class"] for u in users if int(u.get("Users") or 0) > 0]


def problems(rows: list[Row], failures: list[dict[str, str]], exceptions: list[dict[str, str]],
             scenarios: list[str]) -> list[str]:
    """Why the run failed, one line each; empty when it passed.

    ``scenarios``: the user classes that ran, each of which must have made its requests.
    """
    out: list[str] = []
    total = next((r for r in rows if r.name == "Aggregated"), None)
    if total is None or total.requests == 0:
        out.append("no request was made (did locust start? see its output above)")
    elif total.failures:
        out.append(f"{total.failures:,} of {total.requests:,} requests failed:")
        for f in sorted(failures, key=lambda f: -int(f.get("Occurrences") or 0))[:10]:
            out.append(f"  {f.get('Occurrences')} x {f.get('Method')} {f.get('Name')}: "
                       f"{error_text(f.get('Error') or '')}")
    for e in exceptions:
        out.append(f"the locustfile raised {e.get('Count')} x {e.get('Message')}")
    made = {r.name for r in rows if r.requests}
    for cls in scenarios:
        mark = SCENARIOS.get(cls)
        if mark is not None and not any(name.startswith(mark) for name in made):
            out.append(f"scenario {cls} made no {mark} request")
    return out
