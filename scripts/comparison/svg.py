"""SVG drawing without a library: the primitives, axis ticks, a line-plot panel and the legend."""

import math

from .labels import COLOR, LABEL


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Svg:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.el = []

    def add(self, s):
        self.el.append(s)

    def text(self, x, y, s, size=12, anchor="start", weight="normal", color="#000", rotate=None):
        tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                 f'font-weight="{weight}" fill="{color}"{tr}>{esc(s)}</text>')

    def line(self, x1, y1, x2, y2, color="#000", width=1, dash=None):
        da = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
                 f'stroke-width="{width}"{da}/>')

    def rect(self, x, y, w, h, fill, stroke="none"):
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
                 f'fill="{fill}" stroke="{stroke}"/>')

    def polyline(self, pts, color, width=2):
        p = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        self.add(f'<polyline points="{p}" fill="none" stroke="{color}" stroke-width="{width}"/>')

    def circle(self, x, y, r, color, hollow=False):
        fill = "#fff" if hollow else color
        self.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}" stroke="{color}" stroke-width="1.5"/>')

    def save(self, path):
        with open(path, "w") as f:
            f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
                    f'viewBox="0 0 {self.w} {self.h}" font-family="Helvetica, Arial, sans-serif">\n')
            f.write(f'<rect width="{self.w}" height="{self.h}" fill="#fff"/>\n')
            f.write("\n".join(self.el))
            f.write("\n</svg>\n")


def nice_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=mag * 10)
    t = math.ceil(lo / step) * step
    out = []
    while t <= hi + 1e-9:
        out.append(t)
        t += step
    return out


def fmt_rate(v):
    return f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"


def panel(svg, x0, y0, w, h, title, series, xmax, ylog, ylabel, xlabel="offered rate (req/s)"):
    """series: list of (target, [(x, y, hollow)]) drawn as lines with markers."""
    ys = [p[1] for _, pts in series for p in pts if p[1] and p[1] > 0]
    if not ys:
        return
    svg.text(x0 + w / 2, y0 - 8, title, size=14, anchor="middle", weight="bold")
    svg.rect(x0, y0, w, h, "none", stroke="#999")
    if ylog:
        lo = 10 ** math.floor(math.log10(min(ys)))
        hi = 10 ** math.ceil(math.log10(max(ys)))
        fy = lambda v: y0 + h - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * h
        e = math.log10(lo)
        decades = math.log10(hi) - math.log10(lo)
        while 10 ** e <= hi * 1.0001:
            for m in ((1, 2, 5) if decades <= 3 else (1,)):
                v = m * 10 ** e
                if v > hi * 1.0001:
                    break
                svg.line(x0, fy(v), x0 + w, fy(v), "#ddd" if m == 1 else "#f0f0f0")
                svg.text(x0 - 5, fy(v) + 4, f"{v:g}", size=11 if m == 1 else 9, anchor="end",
                         color="#000" if m == 1 else "#777")
            e += 1
    else:
        hi = max(ys) * 1.1
        fy = lambda v: y0 + h - v / hi * h
        for v in nice_ticks(0, hi):
            svg.line(x0, fy(v), x0 + w, fy(v), "#ddd")
            svg.text(x0 - 5, fy(v) + 4, f"{v:g}", size=11, anchor="end")
    fx = lambda v: x0 + v / xmax * w
    for v in nice_ticks(0, xmax, 6):
        svg.line(fx(v), y0 + h, fx(v), y0 + h + 4, "#666")
        svg.text(fx(v), y0 + h + 16, fmt_rate(v), size=11, anchor="middle")
    svg.text(x0 + w / 2, y0 + h + 32, xlabel, size=12, anchor="middle")
    svg.text(x0 - 42, y0 + h / 2, ylabel, size=12, anchor="middle", rotate=-90)
    for t, pts in series:
        pts = [p for p in pts if p[1] and p[1] > 0]
        if not pts:
            continue
        svg.polyline([(fx(x), fy(y)) for x, y, _ in pts], COLOR[t])
        for x, y, hollow in pts:
            svg.circle(fx(x), fy(y), 3.5, COLOR[t], hollow)


def legend(svg, x, y, targets, per_row=7):
    for i, t in enumerate(targets):
        cx = x + (i % per_row) * 150
        cy = y + (i // per_row) * 18
        svg.line(cx, cy - 4, cx + 22, cy - 4, COLOR[t], 3)
        svg.text(cx + 28, cy, LABEL[t], size=12)
