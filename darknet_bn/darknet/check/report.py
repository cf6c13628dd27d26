"""The check's report: one row per cfg layer, the model's extra units, text and JSON."""
import json
import math
import textwrap
from dataclasses import asdict, dataclass, field

#: The precisions as the table's ``prec`` column shows them.
_SHORT_PRECISION = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
#: Sections as the table shows them: Darknet's own short name for [convolutional].
_SECTION = {"convolutional": "conv"}


def _covers(rows):
    """``layers 0, 2`` / ``unit 'name'``: the rows a diagnosis covers (cfg layer indices,
    model unit names)."""
    parts = []
    for word, items in (("layer", [str(r) for r in rows if isinstance(r, int)]),
                        ("unit", [repr(r) for r in rows if isinstance(r, str)])):
        if items:
            parts.append(f"{word}{'s' if len(items) > 1 else ''} {', '.join(items)}")
    return "; ".join(parts)


def _ulps(n):
    """An ulp count in at most 7 characters."""
    return str(n) if n < 10**7 else f"{n:.1e}"


@dataclass(kw_only=True)
class LayerCheck:
    """One Darknet layer against its counterpart in the converted model."""
    index: int                 #: cfg layer index
    section: str               #: convolutional / connected / batchnorm
    channels: int
    form: str                  #: "batchnorm", "folded" or "missing"
    model_name: str            #: the node or module name(s) paired with it
    reference: str             #: what Darknet computes for this layer
    ok: bool
    max_rel_error: float       #: the probes' largest error (relative to the terms)
    max_ulp: int               #: in ulps of ``precision``
    worst_channel: int
    diagnosis: str = ""
    precision: str = "float32"     #: the precision the model stores, judged in
    tolerance: float = 0.0
    max_weight_error: float = 0.0  #: every weight against Darknet's filter (times the factor)
    choice: str = ""           #: how an ambiguous pairing was settled
    pairing: str = ""          #: a finding of the pairing (a name disagreeing with the shapes)
    misreads: list = field(default_factory=list)   #: ids of the findings explaining it
    #: quantized parameters: what they are ("int8, per channel"); the error is then in
    #: units of half a quantization step (tolerance 1) and ``max_ulp`` in steps
    quantization: str = ""
    #: quantized: the smallest relative change of a channel's folded weights this
    #: precision sees (median and largest over the channels)
    resolution: float = 0.0
    resolution_max: float = 0.0


@dataclass(kw_only=True)
class ExtraUnit:
    """A model unit no cfg layer took: listed; failing when in the data path."""
    name: str
    kind: str
    channels: int
    in_data_path: bool


@dataclass
class CheckReport:
    """``check_model``'s result: ``ok`` when every layer is within its tolerance and no
    extra unit sits in the data path."""
    ok: bool
    dialect: str
    source: str
    tolerance: float               #: the float32 tolerance (rows carry their own)
    layers: list = field(default_factory=list)
    extra: list = field(default_factory=list)
    notes: list = field(default_factory=list)  #: how the model was read and paired (a fallback)
    #: misreads (``darknet.misreads.Finding``): where failing layers' floats came from,
    #: each once with its fix and the layers it explains
    findings: list = field(default_factory=list)
    #: what each quantized precision judged cannot see, one sentence each
    limits: list = field(default_factory=list)

    @property
    def precisions(self):
        return sorted({r.precision for r in self.layers if r.form != "missing"})

    #: Columns of the text table (``format_table``): a terminal's width.
    WIDTH = 80

    def format_table(self, width=WIDTH):
        """The report as lines of text: what ``print(report)`` shows and ``darknet-bn
        check`` prints.  One row per cfg layer (and per model unit not in the cfg), each
        at most ``width`` columns (model names are shortened, ``[convolutional]`` is
        Darknet's ``conv``, the precision column appears when the model mixes
        precisions); a layer's diagnosis is a number in the ``note`` column.  Then a
        summary line and each diagnosis once, with its fix and the layers it covers,
        wrapped to ``width``."""
        columns = {"layer": (5, ">"), "section": (9, "<"), "chan": (5, ">"),
                   "form": (9, "<"), "model": (0, "<"), "prec": (4, "<"),
                   "rel err": (8, ">"), "ulp": (7, ">"), "ok": (4, "<"), "note": (4, "<")}
        if len(self.precisions) < 2:
            del columns["prec"]
        name_width = max(8, width + 1 - sum(w + 1 for w, _ in columns.values()))
        columns["model"] = (name_width, "<")
        notes = {}                 # text -> the rows it covers (layer indices, unit names)

        def note(text, row):
            if not text:
                return ""
            notes.setdefault(text, []).append(row)
            return f"[{list(notes).index(text) + 1}]"

        def line(**values):
            if len(values["model"]) > name_width:
                values["model"] = values["model"][:name_width - 3] + "..."
            return " ".join(f"{values.get(key, ''):{align}{w}}"
                            for key, (w, align) in columns.items()).rstrip()

        lines = [line(**{key: key for key in columns})]
        for r in self.layers:
            text = "; ".join(x for x in (r.diagnosis, r.choice, r.pairing) if x)
            prec = "" if r.form == "missing" else _SHORT_PRECISION.get(r.precision,
                                                                       r.precision)
            lines.append(line(layer=r.index, section=_SECTION.get(r.section, r.section),
                              chan=r.channels, form=r.form, model=r.model_name, prec=prec,
                              **{"rel err": f"{r.max_rel_error:.3g}"},
                              ulp=_ulps(r.max_ulp), ok="ok" if r.ok else "FAIL",
                              note=note(text, r.index)))
        for x in self.extra:
            text = ("an extra unit in the data path: its output reaches a paired layer"
                    if x.in_data_path else
                    "not in the cfg: its output reaches no paired layer (listed, not failed)")
            lines.append(line(layer="-", section="(extra)", chan=x.channels, form=x.kind,
                              model=x.name, ok="FAIL" if x.in_data_path else "",
                              note=note(text, x.name)))
        bad = [r for r in self.layers if not r.ok]
        judged = ", ".join(
            f"{p} ({r_tol:.3g}, 8 {p} unit roundoffs)" if not q else
            f"{q} (each parameter within half its quantization step)"
            for p, r_tol, q in sorted({(r.precision, r.tolerance, r.quantization)
                                       for r in self.layers if r.form != "missing"}))
        summary = (f"{len(self.layers) - len(bad)} of {len(self.layers)} layers within the "
                   f"tolerance of {self.dialect}'s inference; judged in {judged or '-'}" +
                   ("" if not bad else f"; failing: {', '.join(str(r.index) for r in bad)}"))
        if self.findings:
            summary += "; misread: " + ", ".join(f"{f.id} ({f.name})" for f in self.findings)
        lines += textwrap.wrap(summary, width, subsequent_indent="    ")
        for text in self.limits:
            lines += textwrap.wrap(text, width, subsequent_indent="    ")
        for text in self.notes:
            lines += textwrap.wrap(f"note: {text}", width, subsequent_indent="    ")
        for number, (text, rows) in enumerate(notes.items(), 1):
            lines += textwrap.wrap(f"[{number}] {_covers(rows)}: {text}", width,
                                   subsequent_indent="    ", break_on_hyphens=False,
                                   break_long_words=False)
        for f in self.findings:
            lines += textwrap.wrap(f"{f.id} {_covers(f.layers)}: {f.diagnosis}; fix: {f.fix}",
                                   width, subsequent_indent="    ", break_on_hyphens=False,
                                   break_long_words=False)
        return lines

    def __str__(self):
        return "\n".join(self.format_table())

    def to_dict(self):
        """The report as plain JSON-ready data (non-finite numbers as strings)."""
        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value
        data = clean(asdict(self))
        data["precisions"] = self.precisions
        return data

    def to_json(self, **kwargs):
        return json.dumps(self.to_dict(), **kwargs)
