#!/usr/bin/env python3
"""Runs ClickHouse statements on chDB (ClickHouse's current engine, in-process).

Reads a JSON list of {"query": SQL, "data": text or null} from stdin and runs
them in order in one session (a fresh directory). An entry with data is sent
as ClickHouse's HTTP interface does it: the statement, a newline, the data.
Prints a JSON list of the outputs. On the first error, prints it to stderr,
naming the statement, and exits 1.

Run with the venv hack/toolchain.sh makes: ~/.cache/ladder/chdb/bin/python.
"""
import json
import sys
import tempfile

import chdb
from chdb import session


def main() -> int:
    statements = json.load(sys.stdin)
    outputs = []
    with tempfile.TemporaryDirectory(prefix="ladder-chdb-") as path:
        sess = session.Session(path)
        try:
            for i, st in enumerate(statements):
                sql = st["query"]
                if st.get("data") is not None:
                    sql = sql + "\n" + st["data"]
                try:
                    outputs.append(str(sess.query(sql, "TabSeparated")))
                except Exception as err:  # chDB raises its own error types
                    print(f"statement {i} failed: {st['query']}\n{err}", file=sys.stderr)
                    return 1
        finally:
            sess.close()
    json.dump({"engine": chdb.engine_version, "outputs": outputs}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
