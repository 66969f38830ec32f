"""`fer-ray report`: one self-contained HTML page about a labeling output.

The page holds everything inline (CSS, charts and thumbnails as base64 data URIs; no scripts, no
external assets), so it can be mailed or opened anywhere. The charts are also written as PNG
files beside it: <stem>-emotions.png, <stem>-confidence.png and, with several runs,
<stem>-runs.png.

Contents: headline numbers, the emotion distribution (bar chart + table with confidence
quantiles), a confidence histogram (stacked by emotion), per-run emotion counts when there are
several runs, thumbnails per emotion (the highest- and lowest-confidence faces, cropped to their
box; a placeholder when the image cannot be read), the error table (reason, count, example
paths) and the runs' metadata (ids, times, model ids, sources).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os

from . import query as Q
from . import storage
from .emotions import EMOTIONS
from .errors import FerRayError, one_line
from .plotting import pyplot

COLORS = {
    "angry": "#d62728", "disgust": "#6b8e23", "fear": "#9467bd", "happy": "#f2a900",
    "sad": "#1f77b4", "surprise": "#17becf", "neutral": "#7f7f7f",
}
HIST_BINS = 20
THUMB_PX = 112
MAX_THUMB_BYTES = 32 << 20  # a larger image is not fetched for a thumbnail
MAX_VIDEO_THUMB_BYTES = 1 << 30  # nor a larger video from S3 (a local one is read in place)
MAX_TIMELINES = 12  # videos with a timeline chart; the table lists them all


def _color(emotion: str) -> str:
    return COLORS.get(emotion, "#444444")


# ------------------------------------------------------------------------------------ data


def confidence_histogram(out: Q.Output, bins: int = HIST_BINS) -> dict[str, list[int]]:
    """{emotion: counts in `bins` equal bins over [0, 1]}, computed in DuckDB (no rows loaded)."""
    rows = Q.read_all(Q.execute(out, f"""
        SELECT label, least(CAST(floor(confidence * {bins}) AS INTEGER), {bins - 1}) AS b, count(*) AS n
        FROM {Q.TABLE} WHERE error IS NULL AND label IS NOT NULL AND confidence IS NOT NULL
        GROUP BY ALL""")).to_pylist()
    hist: dict[str, list[int]] = {}
    for r in rows:
        hist.setdefault(r["label"], [0] * bins)[max(0, int(r["b"]))] += int(r["n"])
    return hist


def extremes(out: Q.Output, n: int) -> dict[str, dict[str, list[dict]]]:
    """Per emotion: {'high': n rows of highest confidence, 'low': n rows of lowest} (disjoint).

    max_by/min_by with a count keep a top-n heap per emotion: one pass, no sort of all rows."""
    if n <= 0:
        return {}
    fields = ["image_path", "frame_index", "timestamp_s", "face_index", "confidence", "box_x", "box_y", "box_w",
              "box_h", "object_size", "run_id"]
    row = "{" + ", ".join(f"'{f}': {Q.quote(f)}" for f in fields) + "}"
    rows = Q.read_all(Q.execute(out, f"""
        SELECT label, max_by({row}, confidence, {int(n)}) AS high, min_by({row}, confidence, {int(n)}) AS low
        FROM {Q.TABLE} WHERE error IS NULL AND label IS NOT NULL AND confidence IS NOT NULL
        GROUP BY label""")).to_pylist()
    res: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        high = [dict(x, label=r["label"]) for x in r["high"] or []]
        taken = {thumb_key(x) for x in high}
        low = [dict(x, label=r["label"]) for x in r["low"] or [] if thumb_key(x) not in taken]
        res[r["label"]] = {"high": high, "low": low}
    return res


def thumb_key(r: dict) -> tuple:
    return r["image_path"], r.get("frame_index"), r["face_index"]


def thumbnails(rows: list[dict]) -> dict[tuple, bytes | str]:
    """PNG thumbnail (or why there is none) per row of `extremes`: every image fetched once,
    concurrently; each video opened once for all its frames."""
    out: dict = {}
    images = [r for r in rows if r.get("frame_index") is None]
    got = fetch_images(sorted({r["image_path"] for r in images})) if images else {}
    for r in images:
        data = got.get(r["image_path"])
        if isinstance(data, Exception) or data is None:
            out[thumb_key(r)] = _why(data) if data is not None else "not fetched"
            continue
        try:
            out[thumb_key(r)] = thumbnail(data, _box(r))
        except Exception as exc:  # noqa: BLE001 - a changed/corrupt object -> placeholder
            out[thumb_key(r)] = _why(exc)
    by_video: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("frame_index") is not None:
            by_video.setdefault(r["image_path"], []).append(r)
    for uri, frames in by_video.items():
        out.update(_video_thumbs(uri, frames))
    return out


def _video_thumbs(uri: str, rows: list[dict]) -> dict:
    from PIL import Image

    from .video import frame_at

    if storage.is_s3(uri) and max(r.get("object_size") or 0 for r in rows) > MAX_VIDEO_THUMB_BYTES:
        return {thumb_key(r): "video too large for a thumbnail" for r in rows}
    out = {}
    try:
        with storage.Fetcher(1).local_copy(uri) as path:
            for r in rows:
                gray = frame_at(path, r["frame_index"])
                out[thumb_key(r)] = (_thumb(Image.fromarray(gray), _box(r)) if gray is not None
                                     else "frame not readable")
    except Exception as exc:  # noqa: BLE001 - a video gone or changed since -> placeholders
        return {thumb_key(r): _why(exc) for r in rows}
    return out


def _box(r: dict) -> tuple:
    return r["box_x"], r["box_y"], r["box_w"], r["box_h"]


def fetch_images(uris: list[str]) -> dict[str, bytes | Exception]:
    """Bytes of each image (or the exception), S3 objects fetched concurrently in one call."""
    uris = list(dict.fromkeys(uris))
    got = dict(zip(uris, storage.Fetcher(16).fetch(uris)))
    for u, data in got.items():
        if isinstance(data, bytes) and len(data) > MAX_THUMB_BYTES:
            got[u] = ValueError("too large for a thumbnail")
    return got


def thumbnail(data: bytes, box=None, size: int = THUMB_PX) -> bytes:
    """PNG bytes of the face: the image decoded the way the labeling job saw it (upright), cropped
    to `box` (x, y, w, h) when one is set, scaled to fit `size` x `size`."""
    from .preprocess import decode  # the labeling job's decode: same upright pixel grid as the boxes

    return _thumb(decode(data), box, size)


def _thumb(img, box=None, size: int = THUMB_PX) -> bytes:
    if box and all(v is not None for v in box):
        x, y, w, h = (int(v) for v in box)
        if w > 0 and h > 0 and (x, y, w, h) != (0, 0, img.width, img.height):
            img = img.crop((x, y, x + w, y + h))
    from PIL import Image

    if img.mode not in ("RGB", "L"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img).convert("RGB")
    scale = size / max(img.width, img.height)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.LANCZOS if scale < 1 else Image.NEAREST if scale >= 2 else Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


WINDOWS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)


def video_timelines(out: Q.Output) -> dict:
    """{'window': seconds, 'videos': {video: its `query --timeline` rows}}: one window for the
    whole report, the smallest round one that gives the longest video at most ~60 windows."""
    longest = Q.read_all(Q.execute(out, f"SELECT max(timestamp_s) AS t FROM {Q.TABLE} "
                                        "WHERE frame_index IS NOT NULL")).column("t")[0].as_py()
    if longest is None:
        return {"window": None, "videos": {}}
    window = next((w for w in WINDOWS if w >= longest / 60), WINDOWS[-1])
    videos: dict[str, list[dict]] = {}
    for r in Q.read_all(Q.execute(out, Q.timeline_sql(window))).to_pylist():
        videos.setdefault(r["video"], []).append(r)
    return {"window": window, "videos": videos}


# ------------------------------------------------------------------------------------ charts


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def emotion_chart(summary: dict) -> bytes:
    plt = pyplot()
    emos = summary["emotions"]
    names = [e["emotion"] for e in emos]
    counts = [e["count"] for e in emos]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    bars = ax.bar(names, counts, color=[_color(n) for n in names], edgecolor="#333333", linewidth=0.5)
    top = max(counts) if counts and max(counts) > 0 else 1
    for bar, e in zip(bars, emos):
        ax.annotate(f"{e['count']:,}\n{e['share']:.1%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8.5, xytext=(0, 2), textcoords="offset points")
    ax.set_ylim(0, top * 1.25)
    ax.set_ylabel("faces")
    ax.set_title(f"Emotion distribution ({summary['labeled']:,} labeled faces)", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{int(v):,}"))
    return _png(fig)


def confidence_chart(hist: dict[str, list[int]], summary: dict, bins: int = HIST_BINS) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    width = 1.0 / bins
    lefts = [i * width for i in range(bins)]
    bottom = [0] * bins
    order = [e for e in EMOTIONS if e in hist] + sorted(k for k in hist if k not in EMOTIONS)
    for e in order:
        counts = hist[e]
        ax.bar(lefts, counts, width=width, bottom=bottom, align="edge", color=_color(e), label=e,
               edgecolor="white", linewidth=0.4)
        bottom = [b + c for b, c in zip(bottom, counts)]
    c = summary["confidence"]
    for key, style in (("p10", ":"), ("p50", "--"), ("p90", ":")):
        if c.get(key) is not None:
            ax.axvline(c[key], color="#222222", linestyle=style, linewidth=1)
            ax.annotate(f"{key} {c[key]:.2f}", (c[key], 1.0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence (probability of the predicted emotion)")
    ax.set_ylabel("faces")
    ax.set_title("Confidence histogram", fontsize=11, pad=16)
    ax.spines[["top", "right"]].set_visible(False)
    if order:
        ax.legend(fontsize=8, frameon=False, ncol=1, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def runs_chart(summary: dict) -> bytes:
    """Share of each emotion per run: how the distribution moved between runs."""
    plt = pyplot()
    runs = summary["runs"]
    names = [e["emotion"] for e in summary["emotions"]]
    fig, ax = plt.subplots(figsize=(7.5, 0.5 + 0.45 * len(runs) + 0.6))
    left = [0.0] * len(runs)
    labels = [r["run_id"] for r in runs]
    for e in names:
        shares = [(r["emotions"].get(e, 0) / r["labeled"]) if r["labeled"] else 0 for r in runs]
        ax.barh(labels, shares, left=left, color=_color(e), label=e, edgecolor="white", linewidth=0.4)
        for i, s in enumerate(shares):
            if s >= 0.06:
                ax.text(left[i] + s / 2, i, f"{s:.0%}", ha="center", va="center", fontsize=7.5, color="white")
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of the run's labeled faces")
    ax.set_title("Emotion shares per run", fontsize=11)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def timeline_chart(video: str, rows: list[dict], window: float) -> bytes:
    """Emotion shares of the faces per time window of one video (blank where no face was seen)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    starts = [r["window_start_s"] for r in rows]
    bottom = [0.0] * len(rows)
    for e in EMOTIONS:
        shares = [r[e] or 0.0 for r in rows]
        ax.bar(starts, shares, width=window, bottom=bottom, align="edge", color=_color(e), label=e, linewidth=0)
        bottom = [b + v for b, v in zip(bottom, shares)]
    ax.set_xlim(0, max(r["window_end_s"] for r in rows))
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"time (s), windows of {window:g} s")
    ax.set_ylabel("share of faces")
    ax.set_title(video.rsplit("/", 1)[-1], fontsize=10)
    ax.legend(fontsize=7.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


# ------------------------------------------------------------------------------------ HTML

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;color:#222;
  margin:0;background:#f6f7f9;line-height:1.4}
main{max-width:1080px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:32px 0 10px;padding-bottom:4px;border-bottom:2px solid #dde1e6}
h3{font-size:15px;margin:18px 0 6px}
.sub{color:#555;font-size:13px;margin:0 0 16px;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px 16px;min-width:120px}
.card .v{font-size:22px;font-weight:600}
.card .k{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.04em}
.chart{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:8px;margin:8px 0;text-align:center}
.chart img{max-width:100%;height:auto}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:8px 0;width:100%}
th,td{border:1px solid #dde1e6;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:middle}
.emo{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:6px 12px 10px;margin:10px 0}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
.groups{display:flex;flex-wrap:wrap;gap:10px 36px}
.group+.group{border-left:1px solid #e3e6ea;padding-left:24px}
.rowlabel{font-size:12px;color:#555;margin:6px 0 4px}
figure{margin:0;width:PXpx;text-align:center}
figure img,.ph{width:PXpx;height:PXpx;object-fit:contain;background:#eceff2;border-radius:4px;display:block}
.ph{display:flex;align-items:center;justify-content:center;color:#888;font-size:11px;text-align:center;
  border:1px dashed #bbb;box-sizing:border-box;padding:4px}
figcaption{font-size:11px;color:#333;margin-top:2px}
figcaption .p{color:#777;display:block;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.none{color:#777;font-style:italic;font-size:13px}
footer{margin-top:36px;color:#888;font-size:12px}
""".replace("PX", str(THUMB_PX))


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


def _img(png: bytes, alt: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" alt="{_e(alt)}">'


def _num(v, fmt: str = ",") -> str:
    return "–" if v is None else format(v, fmt)


def _table(headers: list[tuple[str, bool]], rows: list[list[str]]) -> str:
    head = "".join(f'<th{" class=n" if num else ""}>{_e(h)}</th>' for h, num in headers)
    body = "".join(
        "<tr>" + "".join(cell for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(v, num: bool = False, cls: str = "") -> str:
    """A cell; `v` is HTML already (escape text with _e first)."""
    classes = " ".join(c for c in ("n" if num else "", cls) if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{v}</td>"


def _thumbs_html(ex: dict, images: dict) -> str:
    parts = []
    for emotion in [e for e in EMOTIONS if e in ex] + sorted(k for k in ex if k not in EMOTIONS):
        groups = []
        for key, title in (("high", "highest confidence"), ("low", "lowest confidence")):
            rows = ex[emotion][key]
            if not rows:
                continue
            figs = []
            for r in rows:
                thumb = images.get(thumb_key(r))
                name = r["image_path"].rsplit("/", 1)[-1]
                face = f" · face {r['face_index']}" if r["face_index"] else ""
                if r.get("timestamp_s") is not None:
                    face += f" · {r['timestamp_s']:.1f} s"
                if isinstance(thumb, bytes):
                    pic = _img(thumb, f"{emotion} {r['confidence']:.3f} {name}")
                else:
                    pic = f'<div class="ph">image not available<br>({_e(thumb or "unreadable")})</div>'
                figs.append(
                    f'<figure title="{_e(r["image_path"])}">{pic}<figcaption>{r["confidence"]:.3f}{face}'
                    f'<span class="p">{_e(name)}</span></figcaption></figure>'
                )
            groups.append(f'<div class="group"><div class="rowlabel">{title}</div>'
                          f'<div class="row">{"".join(figs)}</div></div>')
        parts.append(
            f'<div class="emo"><h3><span class="swatch" style="background:{_color(emotion)}"></span>'
            f'{_e(emotion)}</h3><div class="groups">{"".join(groups)}</div></div>'
        )
    if not parts:
        return '<p class="none">No labeled faces.</p>'
    return "".join(parts)


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return storage.fetch_error(exc)
    return one_line(exc)[:60]


def build(dest, out_html: str, thumbs: int = 4, title: str | None = None, **filters) -> dict:
    """Write the report for DEST's committed runs (after `filters`) to `out_html` plus the PNG
    charts beside it. Returns {'html': path, 'pngs': [paths], 'summary': summary dict}."""
    if thumbs < 0:
        raise FerRayError("--thumbs must be >= 0")
    out = Q.open_labels(dest, **filters)
    s = Q.summary(out)
    hist = confidence_histogram(out)
    ex = extremes(out, thumbs)

    images = thumbnails([r for g in ex.values() for rows in g.values() for r in rows])
    videos = video_timelines(out)

    charts = {"emotions": emotion_chart(s), "confidence": confidence_chart(hist, s)}
    if len(s["runs"]) > 1:
        charts["runs"] = runs_chart(s)
    for k, (video, rows) in enumerate(list(videos["videos"].items())[:MAX_TIMELINES]):
        charts[f"timeline-{k + 1}"] = timeline_chart(video, rows, videos["window"])

    out_html = os.path.abspath(out_html)
    folder = os.path.dirname(out_html)
    stem = os.path.splitext(os.path.basename(out_html))[0]
    try:
        os.makedirs(folder, exist_ok=True)
        pngs = []
        for name, png in charts.items():
            p = os.path.join(folder, f"{stem}-{name}.png")
            with open(p, "wb") as f:
                f.write(png)
            pngs.append(p)
        page = render(s, charts, ex, images, thumbs, title, videos)
        with open(out_html, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as exc:
        raise FerRayError(f"cannot write the report to {out_html}: {one_line(exc)}") from None
    return {"html": out_html, "pngs": pngs, "summary": s}


def _videos_html(videos: dict, charts: dict) -> str:
    if not videos["videos"]:
        return ""
    rows, figs = [], []
    for k, (video, tl) in enumerate(videos["videos"].items()):
        faces = sum(r["faces"] for r in tl)
        counts = {e: sum(round((r[e] or 0) * r["faces"]) for r in tl) for e in EMOTIONS}
        top = max(EMOTIONS, key=lambda e: counts[e]) if faces else ""
        rows.append([_td(_e(video), cls="path"), _td(_num(max(r["window_end_s"] for r in tl), ",.0f"), True),
                     _td(_num(sum(r["frames"] for r in tl)), True),
                     _td(_num(sum(r["frames_with_faces"] for r in tl)), True), _td(_num(faces), True), _td(_e(top))])
        if f"timeline-{k + 1}" in charts:
            figs.append(f'<div class="chart">{_img(charts[f"timeline-{k + 1}"], "timeline of " + video)}</div>')
    more = len(videos["videos"]) - len(figs)
    note = f'<p class="sub">Timelines of the first {len(figs)} videos; {more} more in the table.</p>' if more else ""
    return ("<h2>Videos</h2>" + "".join(figs) + note
            + _table([("video", False), ("seconds (to)", True), ("frames sampled", True), ("with faces", True),
                      ("faces", True), ("most frequent", False)], rows))


def render(s: dict, charts: dict[str, bytes], ex: dict, images: dict, thumbs: int, title: str | None,
           videos: dict | None = None) -> str:
    title = title or "Labeling report"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    c = s["confidence"]
    cards = [
        ("rows", _num(s["rows"])), ("images", _num(s["images"])), ("labeled faces", _num(s["labeled"])),
        ("photos without a face", _num(s.get("no_face", 0))),
        ("errors", f"{_num(s['errors'])} <small>({s['error_share']:.1%})</small>"), ("runs", _num(len(s["runs"]))),
        ("median confidence", _num(c["p50"], ".3f")),
    ]
    cards_html = "".join(f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{v}</div></div>'
                         for k, v in cards)
    filt = ""
    if s["filters"]:
        text = ", ".join(f"{k}={Q.fmt_filter(v)}" for k, v in s["filters"].items())
        filt = f'<p class="sub">filters: {_e(text)}</p>'

    emo_rows = [[
        _td(f'<span class="swatch" style="background:{_color(e["emotion"])}"></span>{_e(e["emotion"])}'),
        _td(_num(e["count"]), True), _td(f'{e["share"]:.1%}', True),
        _td(_num(e["p10"], ".3f"), True), _td(_num(e["p50"], ".3f"), True), _td(_num(e["p90"], ".3f"), True),
    ] for e in s["emotions"]]
    emo_table = _table([("emotion", False), ("faces", True), ("share", True), ("p10 confidence", True),
                        ("p50 confidence", True), ("p90 confidence", True)], emo_rows)

    if s["errors_by_reason"]:
        err_rows = [[_td(_e(r["reason"])), _td(_num(r["count"]), True),
                     _td("<br>".join(_e(p) for p in r["examples"]), cls="path")] for r in s["errors_by_reason"]]
        err_html = _table([("reason", False), ("rows", True), ("example paths", False)], err_rows)
    else:
        err_html = '<p class="none">No errors: every image was labeled.</p>'

    run_rows = [[
        _td(_e(r["run_id"]), cls="path"), _td(_e(Q.when(r["started_at"]))), _td(_e(Q.when(r["finished_at"]))),
        _td(_e(r["model_id"]), cls="path"), _td(_e(r["source"]), cls="path"),
        _td(_num(r["rows"]), True), _td(_num(r["images"]), True), _td(_num(r["errors"]), True),
    ] for r in s["runs"]]
    runs_html = _table([("run", False), ("started (UTC)", False), ("finished (UTC)", False), ("model id", False),
                        ("source", False), ("rows", True), ("images", True), ("errors", True)], run_rows)

    per_run = ""
    if len(s["runs"]) > 1:
        names = [e["emotion"] for e in s["emotions"]]
        rows = [[_td(_e(r["run_id"]), cls="path")] + [_td(_num(r["emotions"].get(n, 0)), True) for n in names]
                + [_td(_num(r["confidence"]["p50"], ".3f"), True)] for r in s["runs"]]
        per_run = (
            "<h2>Runs compared</h2>"
            f'<div class="chart">{_img(charts["runs"], "emotion shares per run")}</div>'
            + _table([("run", False)] + [(n, True) for n in names] + [("p50 confidence", True)], rows)
        )

    thumbs_html = (_thumbs_html(ex, images) if thumbs else
                   '<p class="none">Thumbnails were turned off (--thumbs 0).</p>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style></head>
<body><main>
<h1>{_e(title)}</h1>
<p class="sub">{_e(s["dest"])} · {len(s["runs"])} committed run(s) · generated {_e(now)}</p>
{filt}
<div class="cards">{cards_html}</div>
<p class="sub">confidence quantiles over all labeled faces: p10 {_num(c["p10"], ".3f")} ·
p50 {_num(c["p50"], ".3f")} · p90 {_num(c["p90"], ".3f")}</p>

<h2>Emotion distribution</h2>
<div class="chart">{_img(charts["emotions"], "emotion distribution")}</div>
{emo_table}

<h2>Confidence</h2>
<div class="chart">{_img(charts["confidence"], "confidence histogram")}</div>
{per_run}
{_videos_html(videos or {"videos": {}}, charts)}
<h2>Examples per emotion</h2>
<p class="sub">The {thumbs} highest- and lowest-confidence faces of each emotion (cropped to the face
box when one is set). Hover for the full path.</p>
{thumbs_html}

<h2>Errors</h2>
{err_html}

<h2>Runs</h2>
{runs_html}
<footer>fer-ray report · only committed runs (those with a _runs/&lt;run_id&gt;.json marker) are included.</footer>
</main></body></html>
"""
