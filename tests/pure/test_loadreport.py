"""Reading a locust run back (loadtests/loadreport.py): the results table and the verdict.

A run with failures, exceptions, no requests at all, or a scenario that made none of its
requests must not pass."""

from __future__ import annotations

from loadreport import SCENARIOS, classes_run, error_text, problems, read_stats, table

STATS = """Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,\
Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,\
50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%
GET,/gallery.html,10,0,1,1.5,0.5,9,900,2.0,0.0,1,1,1,1,2,3,9,9,9,9,9
GET,/app/account,5,{fail},0.4,0.6,0.3,2,40,1.0,0.0,0.4,1,1,1,1,2,2,2,2,2,2
,Aggregated,15,{fail},1,1.2,0.3,9,600,3.0,0.0,1,1,1,1,2,3,9,9,9,9,9
"""


def test_report_table_and_a_clean_run() -> None:
    rows = read_stats(STATS.format(fail=0))
    assert [r.name for r in rows] == ["/gallery.html", "/app/account", "Aggregated"]
    assert problems(rows, [], [], []) == []
    text = table(rows)
    assert "| GET /gallery.html | 10 | 0 | 2.0 | 1.0 | 1.5 | 3.0 | 9.0 | 9.0 |" in text
    assert text.splitlines()[-1].startswith("| **all** | 15 | 0 |")


def test_report_fails_failures_exceptions_and_empty_runs() -> None:
    rows = read_stats(STATS.format(fail=2))
    failures = [{"Method": "GET", "Name": "/app/account", "Occurrences": "2",
                 "Error": "CatchResponseError('server changed from app1 to app2')"}]
    found = problems(rows, failures, [], [])
    assert found == ["2 of 15 requests failed:", "  2 x GET /app/account: server changed from app1 to app2"]
    clean = read_stats(STATS.format(fail=0))
    assert problems(clean, [], [{"Count": "3", "Message": "KeyError('x')"}], []) == [
        "the locustfile raised 3 x KeyError('x')"]
    assert "no request was made" in problems([], [], [], [])[0]
    assert "no request was made" in problems(read_stats(STATS.splitlines()[0]), [], [], [])[0]


def test_report_fails_a_run_that_lost_a_scenario() -> None:
    rows = read_stats(STATS.format(fail=0))
    # 4 users over weights 5/2/2/1 leave Downloader without a user: only classes that ran count.
    users = [{"Class": "Downloader", "Users": "0"}, {"Class": "LoggedInUser", "Users": "1"},
             {"Class": "PageVisitor", "Users": "2"}]
    assert classes_run(users) == ["LoggedInUser", "PageVisitor"]
    assert problems(rows, [], [], classes_run(users)) == []
    assert problems(rows, [], [], list(SCENARIOS)) == [
        "scenario FormPoster made no /cgi-bin/form request", "scenario Downloader made no /files/ request"]


def test_error_text_unwraps_locusts_failure_class() -> None:
    assert error_text("CatchResponseError('answered by html1, not a server of pool images')") == \
        "answered by html1, not a server of pool images"
    assert error_text('CatchResponseError("it\'s 401")') == "it's 401"
    assert error_text("ConnectionRefusedError(111, 'Connection refused')") == \
        "ConnectionRefusedError(111, 'Connection refused')"
