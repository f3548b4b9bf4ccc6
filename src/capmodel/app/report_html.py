"""HTML pieces of the report notebooks (workflow/notebooks): the stylesheet, the script
that sorts tables, tables, embedded images, references. Shared by the model and the
summary report, which hold no HTML, CSS or JavaScript of their own; these only format
what the notebooks read from result files.
"""

import html
import urllib.parse

import numpy as np
from PIL import Image

from capmodel.app import attention_maps
from capmodel.image_utils import THUMBNAIL_SIDE, image_from_url, thumbnail_uri

CSS = """<style>
.cm table.cm-t {border-collapse: collapse; font-size: 13px; margin: 6px 0 14px 0; table-layout: auto;}
.cm table.cm-t th, .cm table.cm-t td {border: 1px solid #c8c8c8; padding: 4px 8px; vertical-align: top;
  text-align: left; white-space: normal; max-width: 44em; overflow-wrap: break-word;}
.cm table.cm-t th {white-space: nowrap;}
.cm .row {display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start;}
.cm table.cm-t th {background: #eef1f5; position: sticky; top: 0;}
.cm table.cm-t td.num, .cm table.cm-t th.num {text-align: right; white-space: nowrap;}
.cm table.cm-t tr.baseline td {background: #f3f3f3; font-style: italic;}
.cm table.cm-t img {width: 112px; height: auto; image-rendering: pixelated; display: block;}
.cm table.models th, .cm table.models td {font-size: 12px; padding: 3px 5px; white-space: normal;}
.cm .gen {font-weight: 600;}
.cm .score {color: #555; font-size: 11px; white-space: nowrap;}
.cm ol.refs {margin: 0; padding-left: 1.4em;}
.cm .na {color: #999; font-size: 11px; display: block; width: 112px;}
.cm table.sortable th {cursor: pointer;}
.cm table.sortable th:after {content: " \\2195"; color: #aaa;}
.cm a.back {font-size: 14px;}
.cm table.attention td {max-width: none;}
.cm table.cm-t .attmaps img {width: MAP_SIDEpx; height: MAP_SIDEpx; image-rendering: auto;}
ATTENTION_MAPS</style>""".replace("MAP_SIDE", str(attention_maps.MAP_SIDE)).replace("ATTENTION_MAPS", attention_maps.CSS)

# Tables of class "sortable": a click on a header sorts the rows by that column, ascending
# first, then descending (ascending: numbers numerically, then text alphabetically). One
# listener on the document serves every table, so the script can come before the tables it
# sorts; the flag keeps a re-displayed script (a cell run twice) from adding a second
# listener that would undo the first.
SORT_SCRIPT = """<script>
if (!window.capmodelSortable) {
  window.capmodelSortable = true;
  document.addEventListener("click", function (event) {
    var th = event.target.closest("table.sortable > thead th");
    if (!th) return;
    var table = th.closest("table"), col = th.cellIndex, body = table.tBodies[0];
    var asc = th.dataset.order !== "asc";
    th.dataset.order = asc ? "asc" : "desc";
    var key = function (row) {
      var text = row.cells[col].innerText.trim(), n = parseFloat(text);
      return isNaN(n) ? [1, text.toLowerCase()] : [0, n];
    };
    var rows = Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      var order = x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
      return asc ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
}
</script>"""

_images = {}
_remote = {"ok": True}


def esc(value):
    return html.escape(str(value))


def _picture(url):
    """(thumbnail as a uint8 array (H, W, 3), its data: URI) of the picture at url, or None
    when it cannot be read. At most image_utils.MAX_PICTURE_BYTES of a picture are read (a
    urls entry naming a device or a huge file is "image unavailable") and only thumbnails are
    kept, so a report on large photos holds little memory. After one failed http(s) URL no further remote image is tried (COCO's
    Flickr URLs offline would otherwise cost a timeout each)."""
    if url not in _images:
        remote = urllib.parse.urlparse(str(url)).scheme in ("http", "https")
        _images[url] = None
        if not remote or _remote["ok"]:
            try:
                image = Image.fromarray(image_from_url(url, timeout=5))
            except ValueError:
                _remote["ok"] = _remote["ok"] and not remote
            else:
                uri = thumbnail_uri(image)  # from the full picture: PNG or JPEG as it suits
                image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.LANCZOS)
                _images[url] = (np.asarray(image), uri)
    return _images[url]


def thumbnail(url):
    """The picture at url reduced to at most THUMBNAIL_SIDE pixels a side, a uint8 array
    (H, W, 3), or None when it cannot be read."""
    picture = _picture(url)
    return None if picture is None else picture[0]


def img_tag(url):
    """An <img> with the picture embedded as a thumbnail, or a note when it cannot be read."""
    picture = _picture(url)
    if picture is None:
        return '<span class="na">image unavailable</span>'
    return f'<img alt="{esc(url)}" src="{picture[1]}">'


def refs_html(references):
    return '<ol class="refs">' + "".join(f"<li>{esc(r)}</li>" for r in references) + "</ol>"


def table_html(header, rows, cls="", row_classes=None, num_cols=()):
    """An HTML table from a header list and rows of already-escaped cell HTML."""
    th = "".join(f'<th class="num">{h}</th>' if i in num_cols else f"<th>{h}</th>" for i, h in enumerate(header or []))
    body = []
    for k, row in enumerate(rows):
        rc = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        tds = "".join(f'<td class="num">{c}</td>' if i in num_cols else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{rc}>{tds}</tr>")
    head = f"<thead><tr>{th}</tr></thead>" if header else ""
    return f'<table class="cm-t {cls}">{head}<tbody>{"".join(body)}</tbody></table>'


def show(fragment):
    """Display an HTML fragment in the notebook, styled by CSS."""
    from IPython.display import HTML, display

    display(HTML(f'<div class="cm">{fragment}</div>'))


def show_head():
    """Display the report's stylesheet and table-sorting script, once, at the top of a report."""
    from IPython.display import HTML, display

    display(HTML(CSS + SORT_SCRIPT))


def fmt(value):
    """A setting or number for reading: None as '-', floats to 6 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def two_columns(pairs, header=("setting", "value")):
    """A two-column table of (name, value) pairs (header None: no header row)."""
    return table_html(header and list(header), [[esc(k), esc(fmt(v))] for k, v in pairs])


def side_by_side(*fragments):
    return '<div class="row">' + "".join(f"<div>{f}</div>" for f in fragments) + "</div>"


def attention_table(urls, image_idxs, texts, alphas):
    """A table of pictures with their caption and, under it, each word's attention map
    (attention_maps.maps_html); a picture that cannot be read gets its caption only.

    Inputs:
    - urls, image_idxs, texts: Each picture's location, its number in the split, its caption
    - alphas: For each picture, its words' attention weights, of shape (T, L)
    """
    rows = []
    for url, i, text, a in zip(urls, image_idxs, texts, alphas):
        picture = thumbnail(url)
        maps = "" if picture is None else attention_maps.maps_html(picture, text.split(), a)
        rows.append([img_tag(url) + f'<span class="score">image {i}</span>',
                     f'<span class="gen">{esc(text)}</span>{maps}'])
    return table_html(["image", "generated, and where the model looked for each word"], rows, cls="attention")


def attention_pairs(settings):
    """Each model that attends over regions with its twin without attention: the model whose
    settings are the same but for attention and attention_penalty.

    Inputs:
    - settings: {model name: its training settings (model.json's 'settings')}

    Returns a list of (attention model, twin or None), in the order of settings.
    """
    differs = ("attention", "attention_penalty")
    same = lambda s: {k: v for k, v in s.items() if k not in differs}
    attends = [m for m, s in settings.items() if s.get("attention", "none") != "none"]
    twins = {m: [n for n, s in settings.items() if s.get("attention", "none") == "none"
                 and same(s) == same(settings[m])] for m in attends}
    return [(m, twins[m][0] if twins[m] else None) for m in attends]
