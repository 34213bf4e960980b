"""Prequential comparison of freshet with Vowpal Wabbit and River, whole process.

Two streams, each replayed by every tool in the same (timestamp) order,
every event predicted before it is learned from:

- ratings: a MovieLens file repeated until it holds at least --events
  ratings (each copy's timestamps shifted past the previous copy's), or
  --events synthetic planted-factor ratings; squared loss; RMSE and MAE,
  predictions clipped to freshet's default rating range [0.5, 5];
- clicks: --events synthetic clicks with three context features (device,
  page, hour; the page interacts with the item); logistic loss; log loss and
  AUC.

Per tool and stream the table gives:

- wall seconds of the WHOLE process, from its start to its exit (start-up,
  reading and parsing the file, learning, exit), the median of --repeat
  runs after one untimed warm-up run, and events/s from it; each tool's own
  command line (`freshet eval`, `python -m vowpalwabbit`, a Python loop for
  River) in runs that write no predictions;
- quality from one more run that writes its progressive predictions
  (`freshet eval --predictions`, `vw -p`), scored here by the same code for
  every tool (AUC exact, by ranks);
- peak RSS of the process (os.wait4);
- freshet's speed over the peer's (ratio of the medians) and freshet's loss
  over the peer's (RMSE for ratings, log loss for clicks; below 1 is better).

Vowpal Wabbit runs its own command-line driver (`python -m vowpalwabbit`,
from the vowpalwabbit PyPI package, which ships no `vw` executable), so its
process also starts a Python interpreter (about 0.3 s here): compare on
streams of a million events or more, where that start-up is small. VW
learns with its defaults (`-q ui --rank 10` for the factorised run;
`--loss_function logistic -q ic` for clicks: the item crossed with the
context, what freshet's feature x item factors model). River's BiasedMF uses
the settings of River's own MovieLens example.
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
# Probabilities are kept this far from 0 and 1 when scoring log loss.
EPSILON = 1e-7


# ---- the streams ----------------------------------------------------------


def load_movielens(path):
    """MovieLens ratings (u.data, ratings.dat or ratings.csv) as (user, item,
    rating, ts_ms), in file order."""
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    first = next((line for line in lines if line.strip()), "")
    if "::" in first:
        sep, header = "::", False
    elif "\t" in first:
        sep, header = "\t", False
    else:
        sep, header = ",", first.lower().startswith("userid")
    for line in lines[1:] if header else lines:
        fields = line.split(sep)
        if len(fields) < 4:
            continue
        try:
            rows.append((fields[0], fields[1], float(fields[2]), int(fields[3]) * 1000))
        except ValueError:
            continue
    return rows


def repeated_ratings(path, events, out):
    """Writes the MovieLens file `path` in timestamp order as freshet CSV,
    repeated until it holds at least `events` ratings, each copy's times
    shifted past the previous copy's; returns (ratings, copies)."""
    rows = load_movielens(path)
    rows = [r for _, r in sorted(enumerate(rows), key=lambda e: (e[1][3], e[0]))]
    copies = max(1, math.ceil(events / len(rows)))
    span = rows[-1][3] - rows[0][3] + 1000
    with open(out, "w") as o:
        o.write("user,item,rating,ts,features\n")
        for copy in range(copies):
            shift = copy * span
            for user, item, rating, ts in rows:
                o.write(f"{user},{item},{rating},{ts + shift},\n")
    return len(rows) * copies, copies


def read_csv(path):
    """freshet CSV (header; user,item,value,ts[,features]) as tuples."""
    with open(path) as f:
        next(f)
        for line in f:
            fields = line.rstrip("\n").split(",")
            features = fields[4].split(";") if len(fields) > 4 and fields[4] else []
            yield fields[0], fields[1], float(fields[2]), int(fields[3]), features


def write_peer_inputs(stream, csv_path, work):
    """The stream's VW input, River CSV (ratings) and labels; returns the
    number of events."""
    vw, labels = os.path.join(work, f"{stream}.vw"), os.path.join(work, f"{stream}.labels")
    n = 0
    with open(vw, "w") as v, open(labels, "w") as l:
        river = open(os.path.join(work, f"{stream}.river.csv"), "w") if stream == "ratings" else None
        if river:
            river.write("user,item,rating,ts\n")
        for user, item, value, ts, features in read_csv(csv_path):
            if stream == "ratings":
                v.write(f"{value} |u u{user} |i i{item}\n")
                river.write(f"{user},{item},{value},{ts}\n")
            else:
                context = " ".join(features)
                v.write(f"{1 if value else -1} |u u{user} |i i{item} |c {context}\n")
            l.write(f"{value}\n")
            n += 1
        if river:
            river.close()
    return n


# ---- scoring --------------------------------------------------------------


def rating_quality(predictions, labels):
    low, high = RATING_RANGE
    se = ae = 0.0
    for p, y in zip(predictions, labels):
        p = min(high, max(low, p))
        se += (p - y) ** 2
        ae += abs(p - y)
    n = len(labels)
    return {"rmse": math.sqrt(se / n), "mae": ae / n}


def click_quality(probabilities, labels):
    loss = 0.0
    for p, y in zip(probabilities, labels):
        p = min(1 - EPSILON, max(EPSILON, p))
        loss -= math.log(p) if y else math.log(1 - p)
    # Exact AUC: the mean rank of the positives (ties share their mean rank).
    order = sorted(range(len(labels)), key=probabilities.__getitem__)
    rank_sum, positives, i = 0.0, 0, 0
    while i < len(order):
        j = i
        while j < len(order) and probabilities[order[j]] == probabilities[order[i]]:
            j += 1
        mean_rank = (i + j + 1) / 2
        for k in order[i:j]:
            if labels[k]:
                rank_sum += mean_rank
                positives += 1
        i = j
    negatives = len(labels) - positives
    auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return {"logloss": loss / len(labels), "auc": auc}


def quality(stream, predictions_path, labels_path):
    with open(predictions_path) as f:
        predictions = [float(line.split()[0]) for line in f if line.strip()]
    with open(labels_path) as f:
        labels = [float(line) for line in f]
    if len(predictions) != len(labels):
        raise RuntimeError(f"{predictions_path}: {len(predictions)} predictions for {len(labels)} events")
    return rating_quality(predictions, labels) if stream == "ratings" else click_quality(predictions, labels)


# ---- running --------------------------------------------------------------


def run_child(argv):
    """Runs a command to completion; returns (stdout, wall seconds from its
    start to its exit, peak RSS in MiB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            sys.stderr.write(err.read())
            raise RuntimeError(f"{' '.join(argv)} failed with status {os.waitstatus_to_exitcode(status)}")
        out.seek(0)
        return out.read(), seconds, usage.ru_maxrss / 1024.0


def timed(argv, repeat):
    """One untimed warm-up run, then `repeat` runs: (median seconds, every
    run's seconds, the largest peak RSS, the last run's stdout)."""
    run_child(argv)
    runs = [run_child(argv) for _ in range(repeat)]
    seconds = sorted(s for _, s, _ in runs)
    return seconds[len(seconds) // 2], seconds, max(r for _, _, r in runs), runs[-1][0]


def river_child(path, write):
    """River's BiasedMF over the ratings CSV, writing its predictions to
    `write` if given (the whole process is timed from outside)."""
    from river import optim, reco

    model = reco.BiasedMF(
        n_factors=RIVER_FACTORS,
        bias_optimizer=optim.SGD(0.025),
        latent_optimizer=optim.SGD(0.05),
        weight_initializer=optim.initializers.Zeros(),
        latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=73),
        l2_bias=0.0,
        l2_latent=0.0,
    )
    predictions = []
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            user, item, rating, _ = line.rstrip("\n").split(",")
            predictions.append(model.predict_one(user, item))
            model.learn_one(user, item, float(rating))
    if write:
        with open(write, "w") as out:
            out.writelines(f"{p}\n" for p in predictions)


# ---- the comparison -------------------------------------------------------


def compare(stream, csv_path, events, args, work):
    me, vw = sys.executable, [sys.executable, "-m", "vowpalwabbit", "--quiet"]
    vw_input, labels = os.path.join(work, f"{stream}.vw"), os.path.join(work, f"{stream}.labels")
    preds = lambda name: os.path.join(work, f"{stream}.{name}.preds")
    flag = "--ratings" if stream == "ratings" else "--clicks"
    freshet = [args.freshet, "eval", flag, csv_path, "--json"] + (["--format", "csv"] if stream == "ratings" else [])
    for name in ("dim", "batch"):
        if getattr(args, name):
            freshet += [f"--{name}", getattr(args, name)]
    # (name, timed command, a command writing the predictions, where it writes them)
    tools = [("freshet", freshet, freshet + ["--predictions", preds("freshet")], preds("freshet"))]
    if stream == "ratings":
        rank = ["-q", "ui", "--rank", str(VW_RANK)]
        tools += [
            ("VW linear", vw + ["-d", vw_input], vw + ["-d", vw_input, "-p", preds("vw")], preds("vw")),
            (f"VW -q ui --rank {VW_RANK}", vw + ["-d", vw_input] + rank,
             vw + ["-d", vw_input] + rank + ["-p", preds("vwrank")], preds("vwrank")),
        ]
        if not args.skip_river:
            river = [me, os.path.abspath(__file__), "--river-child", os.path.join(work, "ratings.river.csv")]
            tools.append((f"River BiasedMF ({RIVER_FACTORS} factors)", river,
                          river + ["--river-predictions", preds("river")], preds("river")))
    else:
        for name, extra in [("VW logistic -q ic", ["-q", "ic"]), ("VW logistic, linear", [])]:
            command = vw + ["-d", vw_input, "--loss_function", "logistic"] + extra
            written = preds(name.split(",")[0].replace(" ", "_"))
            tools.append((name, command, command + ["--link", "logistic", "-p", written], written))
    results = []
    for name, command, scoring, written in tools:
        print(f"  {stream}: {name} ...", file=sys.stderr)
        median, seconds, rss, out = timed(command, args.repeat)
        run_child(scoring)
        result = {"name": name, "seconds": median, "runs": seconds, "rss": rss, **quality(stream, written, labels)}
        if name == "freshet":
            result["train_eps"] = json.loads(out)["events_per_s"]
        results.append(result)
    return results


def report(stream, events, source, results, repeat):
    loss = "rmse" if stream == "ratings" else "logloss"
    columns = ["RMSE", "MAE"] if stream == "ratings" else ["log loss", "AUC"]
    keys = ["rmse", "mae"] if stream == "ratings" else ["logloss", "auc"]
    print(f"\n{stream}: {events:,} events ({source}); whole process, median of {repeat} runs\n")
    header = (f"{'tool':<34} {columns[0]:>8} {columns[1]:>8} {'seconds':>8} {'events/s':>11} "
              f"{'peak RSS':>9} {'freshet speed':>14} {'freshet ' + columns[0]:>16}")
    print(header)
    print("-" * len(header))
    fresh = results[0]
    for r in results:
        mine = r is fresh
        speed = "-" if mine else f"{r['seconds'] / fresh['seconds']:.2f}x"
        ratio = "-" if mine else f"{fresh[loss] / r[loss]:.3f}"
        print(f"{r['name']:<34} {r[keys[0]]:>8.4f} {r[keys[1]]:>8.4f} {r['seconds']:>8.3f} "
              f"{events / r['seconds']:>11,.0f} {r['rss']:>6.0f} MiB {speed:>14} {ratio:>16}")
    print(f"runs (s): " + "; ".join(f"{r['name']}: " + ", ".join(f"{s:.3f}" for s in r["runs"]) for r in results))
    print(f"freshet's training loop alone: {fresh['train_eps']:,.0f} events/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freshet")
    parser.add_argument("--movielens", help="a MovieLens ratings file for the ratings stream (else synthetic)")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--streams", default="ratings,clicks")
    parser.add_argument("--workdir")
    parser.add_argument("--dim")
    parser.add_argument("--batch")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per tool; the median counts")
    parser.add_argument("--skip-river", action="store_true", help="leave River out (it takes ~20 s per run)")
    parser.add_argument("--river-child", help=argparse.SUPPRESS)
    parser.add_argument("--river-predictions", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.river_child:
        river_child(args.river_child, args.river_predictions)
        return

    work = args.workdir
    for stream in args.streams.split(","):
        csv_path = os.path.join(work, f"{stream}.csv")
        if stream == "ratings" and args.movielens:
            events, copies = repeated_ratings(args.movielens, args.events, csv_path)
            source = f"{os.path.basename(args.movielens)} in timestamp order, {copies} copies"
        elif stream == "ratings":
            run_child([args.freshet, "eval", "--synthetic", str(args.events), "--export-ratings", csv_path, "--json"])
            source = "synthetic planted-factor ratings"
        elif stream == "clicks":
            run_child([args.freshet, "eval", "--synthetic", str(args.events), "--synthetic-click-share", "1",
                       "--synthetic-click-features", "3", "--export-clicks", csv_path, "--json"])
            source = "synthetic clicks, 3 context features"
        else:
            parser.error(f"unknown stream {stream!r} (ratings, clicks)")
        events = write_peer_inputs(stream, csv_path, work)
        report(stream, events, source, compare(stream, csv_path, events, args, work), args.repeat)


if __name__ == "__main__":
    main()
