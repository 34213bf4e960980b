"""Prequential comparison of freshet, River's BiasedMF and Vowpal Wabbit.

Every tool replays the same ratings in the same (timestamp) order, predicting
each rating before learning from it. Each tool runs in its own child process;
the table reports, per tool:

- RMSE and MAE of its predictions, clipped to freshet's default rating
  range [0.5, 5] (as freshet clips its own);
- events/s: events divided by the time the tool spent reading, parsing and
  learning the file inside its process (interpreter start-up and imports
  excluded; the VW input conversion, done once beforehand, excluded too;
  VW is timed in runs that write no predictions, and scored on one more run
  that writes them, since writing them costs it as much again),
  the median of --repeat runs (default 3) of each tool after one untimed
  warm-up run, so one run slowed by a neighbour on a shared machine does not
  decide a ratio;
- peak RSS of the child process (os.wait4), which for River and VW includes
  the Python interpreter and the imported packages;
- freshet's ratios: its events/s divided by the peer's, and its RMSE divided
  by the peer's.

River's BiasedMF uses the settings of River's own MovieLens example (SGD
0.025 on biases, 0.05 on 10 latent factors initialised N(0, 0.1)); VW runs
with its defaults, as `vw` would (`-q ui --rank 10` for the factorised run).

Vowpal Wabbit runs through its Python binding (pyvw, from the vowpalwabbit
PyPI package, which ships no `vw` executable) with command-line arguments:
`Workspace("-d FILE -p PREDS ...").run_parser()` is VW's own command-line
driver, so the learning loop and the parsing are VW's C++ code.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

RIVER_FACTORS = 10
VW_RANK = 10
# freshet's default rating range (ModelSpec); freshet clips its predictions
# to it and the peers' predictions are clipped to it too.
RATING_RANGE = (0.5, 5.0)


def load_ratings(path, fmt):
    """Ratings as (user, item, rating, ts) in file order."""
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = (line.rstrip("\r\n") for line in f)
        first = next(lines, "")
        if fmt == "csv":
            sep, header = ",", True
        elif "::" in first:
            sep, header = "::", False
        elif "\t" in first:
            sep, header = "\t", False
        else:
            sep, header = ",", first.lower().startswith("userid")
        scale = 1 if fmt == "csv" else 1000
        for line in ([] if header else [first]) + list(lines):
            fields = line.split(sep)
            if len(fields) < 4:
                continue
            try:
                rows.append((fields[0], fields[1], float(fields[2]), int(fields[3]) * scale))
            except ValueError:
                continue
    return rows


def metrics(predictions, labels, low, high):
    n = len(labels)
    se = ae = 0.0
    for p, y in zip(predictions, labels):
        p = min(high, max(low, p))
        se += (p - y) ** 2
        ae += abs(p - y)
    return math.sqrt(se / n), ae / n


def median_run(argv, repeat, seconds_of):
    """Runs a child once to warm up (caches, page tables, CPU; not counted),
    then `repeat` times; returns the parsed output of the run with the
    median time (by `seconds_of`) and the largest peak RSS."""
    run_child(argv)
    runs = []
    for _ in range(repeat):
        out, rss = run_child(argv)
        runs.append((json.loads(out), rss))
    runs.sort(key=lambda run: seconds_of(run[0]))
    return runs[len(runs) // 2][0], max(rss for _, rss in runs)


def run_child(argv):
    """Runs a child to completion; returns (stdout, its peak RSS in MiB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.stderr.write(err.read())
            raise RuntimeError(f"{argv[0]} failed with status {proc.returncode}")
        return out.read(), usage.ru_maxrss / 1024.0


# ---- children -------------------------------------------------------------


def child_prep(path, fmt, work):
    """Writes the ratings in timestamp order (stable) for River (CSV) and VW
    (text format), and the labels; prints the running-mean baseline."""
    rows = load_ratings(path, fmt)
    rows = [r for _, r in sorted(enumerate(rows), key=lambda e: (e[1][3], e[0]))]
    low, high = RATING_RANGE
    with open(os.path.join(work, "ordered.csv"), "w") as o, \
            open(os.path.join(work, "ordered.vw"), "w") as v, \
            open(os.path.join(work, "labels.txt"), "w") as l:
        o.write("user,item,rating,ts\n")
        for user, item, rating, ts in rows:
            o.write(f"{user},{item},{rating},{ts}\n")
            v.write(f"{rating} |u u{user} |i i{item}\n")
            l.write(f"{rating}\n")
    # Running mean: the floor every learner must beat.
    mean = se = ae = 0.0
    for n, (_, _, y, _) in enumerate(rows):
        p = min(high, max(low, mean)) if n else (low + high) / 2
        se += (p - y) ** 2
        ae += abs(p - y)
        mean += (y - mean) / (n + 1)
    print(json.dumps({"events": len(rows), "rmse": math.sqrt(se / len(rows)), "mae": ae / len(rows)}))



def child_river(path, low, high):
    from river import optim, reco

    # The configuration of River's own MovieLens example (river.reco.BiasedMF docs).
    model = reco.BiasedMF(
        n_factors=RIVER_FACTORS,
        bias_optimizer=optim.SGD(0.025),
        latent_optimizer=optim.SGD(0.05),
        weight_initializer=optim.initializers.Zeros(),
        latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=73),
        l2_bias=0.0,
        l2_latent=0.0,
    )
    start = time.perf_counter()
    predictions, labels = [], []
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            user, item, rating, _ = line.rstrip("\n").split(",")
            y = float(rating)
            predictions.append(model.predict_one(user, item))
            labels.append(y)
            model.learn_one(user, item, y)
    seconds = time.perf_counter() - start
    rmse, mae = metrics(predictions, labels, low, high)
    print(json.dumps({"events": len(labels), "rmse": rmse, "mae": mae, "seconds": seconds}))


def child_vw(vw_path, labels_path, args, low, high, workdir, name, mode):
    """mode "time": VW learns the file, writing nothing (its speed); mode
    "predict": it also writes its predictions (its quality; writing them
    costs VW about as much time again as learning, so they are not timed)."""
    from vowpalwabbit import pyvw

    preds = os.path.join(workdir, f"{name}.preds")
    output = f"-p {preds}" if mode == "predict" else ""
    start = time.perf_counter()
    ws = pyvw.Workspace(f"--quiet -d {vw_path} {output} {args}")
    ws.run_parser()
    ws.finish()
    seconds = time.perf_counter() - start
    with open(labels_path) as f:
        labels = [float(line) for line in f]
    result = {"events": len(labels), "seconds": seconds}
    if mode == "predict":
        with open(preds) as f:
            predictions = [float(line.split()[0]) for line in f]
        result["rmse"], result["mae"] = metrics(predictions, labels, low, high)
    print(json.dumps(result))


# ---- parent ---------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freshet", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", choices=["movielens", "csv"], required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--dim")
    parser.add_argument("--batch")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the median time counts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "prep":
        child_prep(args.data, args.format, args.workdir)
        return
    if args.child == "river":
        child_river(*args.child_args[:1], *map(float, args.child_args[1:3]))
        return
    if args.child == "vw":
        a = args.child_args
        child_vw(a[0], a[1], a[2], float(a[3]), float(a[4]), a[5], a[6], a[7])
        return

    # The data preparation runs in a child of its own: a child's peak RSS
    # counts the memory of the process it was forked from, so the parent
    # stays small.
    me = sys.executable
    script = os.path.abspath(__file__)
    work = args.workdir
    ordered = os.path.join(work, "ordered.csv")
    vw_input = os.path.join(work, "ordered.vw")
    labels = os.path.join(work, "labels.txt")
    low, high = RATING_RANGE
    out, _ = run_child([me, script, "--freshet", "-", "--data", args.data, "--format", args.format,
                        "--workdir", work, "--child", "prep"])
    prep = json.loads(out)
    n_rows = prep["events"]
    results = [("running mean", {"rmse": prep["rmse"], "mae": prep["mae"]})]

    cmd = [args.freshet, "eval", "--ratings", args.data, "--format", args.format, "--json"]
    for flag in ("dim", "batch"):
        if getattr(args, flag):
            cmd += [f"--{flag}", getattr(args, flag)]
    fr, rss = median_run(cmd, args.repeat, lambda r: r["load_s"] + r["train_s"])
    fr_total = fr["load_s"] + fr["train_s"]
    results.append((
        f"freshet (dim {fr['dim']}, batch {fr['batch']})",
        {"rmse": fr["rmse"], "mae": fr["mae"], "eps": fr["events"] / fr_total,
         "train_eps": fr["events_per_s"], "rss": rss},
    ))

    def vw(name, args):
        argv = lambda mode: [me, script, "--freshet", "-", "--data", "-", "--format", "csv", "--workdir", work,
                             "--child", "vw", "--child-args", vw_input, labels, args, str(low), str(high), work,
                             name, mode]
        return argv("time"), argv("predict")

    river = [me, script, "--freshet", "-", "--data", "-", "--format", "csv", "--workdir", work,
             "--child", "river", "--child-args", ordered, str(low), str(high)]
    # (name, timed command, command whose predictions are scored; None: the timed one's)
    peers = [
        (f"River BiasedMF ({RIVER_FACTORS} factors)", river, None),
        ("VW linear", *vw("linear", "")),
        (f"VW --rank {VW_RANK}", *vw("rank", f"-q ui --rank {VW_RANK}")),
    ]
    for name, timed, scored in peers:
        r, rss = median_run(timed, args.repeat, lambda r: r["seconds"])
        if scored is not None:
            quality, scored_rss = run_child(scored)
            quality = json.loads(quality)
            r = {**r, "rmse": quality["rmse"], "mae": quality["mae"]}
            rss = max(rss, scored_rss)
        results.append((name, {"rmse": r["rmse"], "mae": r["mae"], "eps": r["events"] / r["seconds"], "rss": rss}))

    fresh = results[1][1]
    print(f"\n{n_rows:,} ratings from {os.path.basename(args.data)}, replayed in timestamp order "
          f"(predictions clipped to [{low}, {high}]; events/s: median of {args.repeat} runs)\n")
    header = f"{'tool':<34} {'RMSE':>7} {'MAE':>7} {'events/s':>12} {'peak RSS':>10} {'freshet speed':>14} {'freshet RMSE':>13}"
    print(header)
    print("-" * len(header))
    for name, r in results:
        eps = f"{r['eps']:,.0f}" if "eps" in r else "-"
        rss = f"{r['rss']:.0f} MiB" if "rss" in r else "-"
        speed = f"{fresh['eps'] / r['eps']:.2f}x" if "eps" in r and r is not fresh else "-"
        ratio = f"{fresh['rmse'] / r['rmse']:.3f}" if r is not fresh else "-"
        print(f"{name:<34} {r['rmse']:>7.4f} {r['mae']:>7.4f} {eps:>12} {rss:>10} {speed:>14} {ratio:>13}")
    print(f"\nfreshet training loop alone: {fresh['train_eps']:,.0f} events/s; "
          "events/s above include reading and parsing the file.")


if __name__ == "__main__":
    main()
