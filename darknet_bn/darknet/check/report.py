"""The check's report: one row per cfg layer, the model's extra units, text and JSON."""
import json
import math
from dataclasses import asdict, dataclass, field


@dataclass
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


@dataclass
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

    @property
    def precisions(self):
        return sorted({r.precision for r in self.layers if r.form != "missing"})

    def format_table(self):
        """The report as lines of text (the CLI prints them)."""
        head = (f"{'layer':>5} {'section':<13} {'chan':>5} {'form':<9} {'model':<24} "
                f"{'prec':<8} {'max rel err':>11} {'max ulp':>10} {'ok':<4} diagnosis")
        lines = [head]
        for r in self.layers:
            name = r.model_name if len(r.model_name) <= 24 else r.model_name[:21] + "..."
            note = "; ".join(x for x in (r.diagnosis, r.choice) if x)
            lines.append(f"{r.index:>5} {r.section:<13} {r.channels:>5} {r.form:<9} "
                         f"{name:<24} {r.precision:<8} {r.max_rel_error:>11.3g} "
                         f"{r.max_ulp:>10} {'ok' if r.ok else 'FAIL':<4} {note}")
        for x in self.extra:
            lines.append(f"{'-':>5} {'(not in cfg)':<13} {x.channels:>5} {x.kind:<9} "
                         f"{x.name[:24]:<24} " +
                         ("FAIL an extra unit in the data path (its output reaches a "
                          "paired layer)" if x.in_data_path else
                          "not in the cfg (its output reaches no paired layer)"))
        bad = [r for r in self.layers if not r.ok]
        judged = ", ".join(f"{p} ({r_tol:.3g}, 8 {p} unit roundoffs)" for p, r_tol in
                           sorted({(r.precision, r.tolerance) for r in self.layers
                                   if r.form != "missing"}))
        lines.append(f"{len(self.layers) - len(bad)} of {len(self.layers)} layers within the "
                     f"tolerance of {self.dialect}'s inference; judged in {judged or '-'}" +
                     ("" if not bad else f"; failing: {', '.join(str(r.index) for r in bad)}"))
        return lines

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
