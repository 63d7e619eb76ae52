"""`make mutation`'s last step: count mutmut's results and fail on a survivor tests/MUTATION.md does
not explain.  Usage: python tests/mutation_report.py RESULTS MUTATION_MD
RESULTS is the output of `mutmut results --all true` (lines "    <mutant>: <status>")."""
import re
import subprocess
import sys
from collections import Counter

# Everything that is not killed needs a reason: a timeout counts as killed (the mutant hung the tests).
UNEXPLAINED = {"survived", "no tests", "suspicious", "skipped", "not checked", "check was interrupted by user"}


def mutated_line(name: str) -> str:
    """The first line the mutant adds, stripped, as `mutmut show` prints it."""
    diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], capture_output=True, text=True).stdout
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return added[0] if added else "\0"


def main(results_path: str, explained_path: str) -> int:
    results = {}
    for line in open(results_path, encoding="utf-8"):
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            results[name] = status
    if not results:
        print(f"{results_path}: no mutmut results (did `mutmut run` run?)")
        return 1
    # A row of MUTATION.md names the mutant and quotes its mutated line: numbers shift when the code
    # changes, so a row counts only while `mutmut show` still gives that line for that name.
    rows = {}
    for line in open(explained_path, encoding="utf-8"):
        for name in re.findall(r"dnibench\.[^\s`|]+__mutmut_\d+", line):
            rows[name] = line
    explained = {n for n, row in rows.items() if results.get(n) in UNEXPLAINED and mutated_line(n) in row}
    by_file: dict[str, Counter] = {}
    for name, status in results.items():
        module = name.split(".x", 1)[0]
        by_file.setdefault(module, Counter())[status] += 1
    total = Counter(results.values())
    for module, counts in sorted(by_file.items()):
        print(f"  {module:28s} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"  {'all':28s} {len(results)} mutants: " + ", ".join(f"{k} {v}" for k, v in sorted(total.items())))
    unexplained = sorted(n for n, s in results.items() if s in UNEXPLAINED and n not in explained)
    stale = sorted(set(rows) - explained)
    if stale:
        print(f"{len(stale)} row(s) of {explained_path} no longer match a survivor (killed, gone, or renumbered): "
              + ", ".join(stale))
    if unexplained:
        print(f"{len(unexplained)} surviving mutant(s) not explained in {explained_path} "
              "(see each with `mutmut show NAME`):")
        for name in unexplained:
            print(f"    {name}: {results[name]}")
        return 1
    print(f"every surviving mutant is explained in {explained_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.splitlines()[1].strip())
    sys.exit(main(*sys.argv[1:]))
