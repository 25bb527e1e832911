"""Gate share of the forward per shape, base vs new, idle and behind a busy GPU, from the
`bench_moe_layer.py --behind-busy-gpu` JSON files of this run (A B B A order: two pairs).

    python3 summarize.py layer-base-1.json layer-new-1.json layer-new-2.json layer-base-2.json
"""
import json
import statistics
import sys


def shares(path):
    data = json.load(open(path))
    out = {}
    for conv in data["behind_busy_gpu"]["gate_conventions"]:
        busy = conv["busy"][0]
        out[conv["shape"]] = (conv["idle"]["gate_share"], busy["gate_share"], conv["idle"]["gate_s"], busy["gate_s"],
                              conv["idle"]["forward_s"])
    return out


def main(paths):
    base1, new1, new2, base2 = (shares(p) for p in paths)
    print(f"{'shape':26s} | idle share: base1 new1 new2 base2 | busy share: base1 new1 new2 base2 | idle gate us base/new (mean of 2)")
    cols = {k: [] for k in ("bi", "ni", "bb", "nb")}
    for shape in base1:
        b_i = [base1[shape][0], base2[shape][0]]
        n_i = [new1[shape][0], new2[shape][0]]
        b_b = [base1[shape][1], base2[shape][1]]
        n_b = [new1[shape][1], new2[shape][1]]
        for k, v in zip(("bi", "ni", "bb", "nb"), (b_i, n_i, b_b, n_b)):
            cols[k].append(v)
        gb = (base1[shape][2] + base2[shape][2]) / 2 * 1e6
        gn = (new1[shape][2] + new2[shape][2]) / 2 * 1e6
        print(f"{shape[:26]:26s} | {b_i[0]:6.1%} {n_i[0]:6.1%} {n_i[1]:6.1%} {b_i[1]:6.1%} | "
              f"{b_b[0]:6.1%} {n_b[0]:6.1%} {n_b[1]:6.1%} {b_b[1]:6.1%} | {gb:7.1f} / {gn:7.1f}")
    for k, name in (("bi", "base idle"), ("ni", "new idle"), ("bb", "base busy"), ("nb", "new busy")):
        for rep in range(2):
            v = [x[rep] for x in cols[k]]
            print(f"{name} pass {rep + 1}: median {statistics.median(v):.1%}, worst {max(v):.1%}, "
                  f"<= 5% on {sum(x <= 0.05 for x in v)} of {len(v)}")


if __name__ == "__main__":
    main(sys.argv[1:])
