#!/usr/bin/env python3
"""Draws docs/quality-plot.svg from bench/quality_plot.sh's points and prints
the points as a markdown table.

usage: plot_quality.py POINTS.tsv OUT.svg [MODEL_NAME]
POINTS.tsv: who <TAB> label <TAB> bytes <TAB> ppl, one file per line, who
"moetool" or "llama.cpp" (llama.cpp's own quantizations, importance matrix
from train.txt, scored by llama.cpp; bench/quality_plot.sh measures both).
Each series' Pareto frontier (no point both smaller and better) is drawn as
a line; points above the y range are drawn at its top edge with their value.
The y range runs from the best perplexity to 6 % above it.
"""
import math
import sys



def frontier(pts):
    out, best = [], float("inf")
    for lab, x, y in sorted(pts, key=lambda p: (p[1], p[2])):
        if y < best:
            out.append((lab, x, y))
            best = y
    return out


def main():
    pts = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
    name = sys.argv[3] if len(sys.argv) > 3 else "kjv-mixtral-15m"
    ours = [(lab, int(b) / 1e6, float(p)) for who, lab, b, p in pts if who == "moetool"]
    THEIRS = [(lab, int(b) / 1e6, float(p)) for who, lab, b, p in pts if who == "llama.cpp"]
    W, H, L, R, TP, B = 900, 520, 70, 150, 34, 50
    xs = [p[1] for p in ours + THEIRS]
    x0, x1 = math.log(min(xs) * 0.9), math.log(max(xs) * 1.15)
    best = min(p[2] for p in ours + THEIRS)
    y0, y1 = best - 0.004 * best, best * 1.06
    X = lambda v: L + (math.log(v) - x0) / (x1 - x0) * (W - L - R)
    Y = lambda v: H - B - (min(v, y1) - y0) / (y1 - y0) * (H - TP - B)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L}" y="20" font-size="13">{name}: file size vs perplexity '
         f'(test.txt, llama.cpp protocol, ctx 256); lower left is better</text>',
         f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
         f'<line x1="{L}" y1="{TP}" x2="{L}" y2="{H-B}" stroke="black"/>',
         f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">file size, MB (log scale)</text>',
         f'<text x="16" y="{(TP+H-B)/2}" transform="rotate(-90 16 {(TP+H-B)/2})" text-anchor="middle">perplexity</text>']
    for v in [3, 4, 5, 6, 8, 10, 15, 20, 30, 40, 60]:
        if x0 <= math.log(v) <= x1:
            o.append(f'<line x1="{X(v):.1f}" y1="{TP}" x2="{X(v):.1f}" y2="{H-B+4}" stroke="#ddd"/>'
                     f'<text x="{X(v):.1f}" y="{H-B+16}" text-anchor="middle">{v}</text>')
    step = 0.5 if y1 - y0 < 5 else 1.0 if y1 - y0 < 10 else 2.0
    v = math.ceil(y0 / step) * step
    while v <= y1:
        o.append(f'<line x1="{L-4}" y1="{Y(v):.1f}" x2="{W-R}" y2="{Y(v):.1f}" stroke="#eee"/>'
                 f'<text x="{L-7}" y="{Y(v)+4:.1f}" text-anchor="end">{v:g}</text>')
        v += step
    for series, color, dy in ((THEIRS, "#d62728", 14), (ours, "#1f77b4", -6)):
        f = frontier(series)
        path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for _, x, y in f)
        o.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5" opacity="0.6"/>')
        on_f = {p[0] for p in f}
        for i, (lab, x, y) in enumerate(sorted(series, key=lambda p: p[1])):
            txt = lab + (f" ({y:.2f}, off scale)" if y > y1 else "")
            # frontier points are labelled; the others get a small label that alternates sides
            yy = Y(y) + (dy if series is THEIRS else (14 if i % 2 else -6))
            size = 11 if lab in on_f or series is THEIRS else 9
            o.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="{4 if lab in on_f else 3}" fill="{color}"/>'
                     f'<text x="{X(x)+5:.1f}" y="{yy:.1f}" fill="{color}" font-size="{size}">{txt}</text>')
    o.append(f'<circle cx="{W-R+18}" cy="{TP+10}" r="4" fill="#1f77b4"/><text x="{W-R+28}" y="{TP+14}">moetool</text>')
    o.append(f'<circle cx="{W-R+18}" cy="{TP+28}" r="4" fill="#d62728"/><text x="{W-R+28}" y="{TP+32}">llama.cpp</text>')
    o.append(f'<text x="{W-R+10}" y="{TP+52}" font-size="9">lines: each side\'s</text>'
             f'<text x="{W-R+10}" y="{TP+63}" font-size="9">best size/ppl front</text>')
    o.append('</svg>')
    open(sys.argv[2], "w").write("\n".join(o) + "\n")
    print("| who | weights | file MB | ppl (llama.cpp protocol) |\n|---|---|---|---|")
    for lab, x, y in ours:
        print(f"| moetool | {lab} | {x:.2f} | {y:.4f} |")
    for lab, x, y in THEIRS:
        print(f"| llama.cpp | {lab} | {x:.2f} | {y:.4f} |")


if __name__ == "__main__":
    main()
