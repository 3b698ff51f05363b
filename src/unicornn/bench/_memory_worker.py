"""``python -m unicornn.bench._memory_worker JSON``: one :func:`unicornn.bench.memory.measure_point` call in
this fresh process, keyword arguments given as a JSON object; prints the result as one JSON line."""

import json
import sys

from unicornn.bench.memory import measure_point

if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit('usage: python -m unicornn.bench._memory_worker \'{"model": ..., "N": ...}\'')
    print(json.dumps(measure_point(**json.loads(sys.argv[1]))))
