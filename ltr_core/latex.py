"""LaTeX that compiles with plain pdflatex: escaping, symbols as math, booktabs tables that fit the page.

Every ``.tex`` the report writes is ASCII: LaTeX specials are escaped (``% & _ # $ { } ~ ^ \\``),
``<``/``>``/``|`` and symbols such as ±, τ, →, ≥ become math (in the default OT1 font encoding a bare
``>`` prints "¿"), dashes become ``--``/``---``, accented letters LaTeX accents. A table is a
``table`` float holding a booktabs ``tabular`` inside ``\\resizebox``, shrunk to ``\\linewidth`` only
when it is wider (never enlarged). The preamble it needs::

    \\usepackage{booktabs}
    \\usepackage{graphicx}
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path
from typing import Sequence

PREAMBLE = "\\usepackage{booktabs}\n\\usepackage{graphicx}\n"

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": "$<$", ">": "$>$", "|": "$|$",
}
_GREEK = ("alpha beta gamma delta varepsilon zeta eta theta iota kappa lambda mu nu xi o pi rho varsigma "
          "sigma tau upsilon varphi chi psi omega").split()
_UNICODE = {
    "±": r"$\pm$", "∓": r"$\mp$", "→": r"$\rightarrow$", "←": r"$\leftarrow$", "↔": r"$\leftrightarrow$",
    "⇒": r"$\Rightarrow$", "≥": r"$\geq$", "≤": r"$\leq$", "≠": r"$\neq$", "≈": r"$\approx$",
    "×": r"$\times$",
    "·": r"$\cdot$", "−": "$-$", "∞": r"$\infty$", "√": r"$\surd$", "°": r"$^\circ$", "µ": r"$\mu$",
    "∈": r"$\in$", "∑": r"$\sum$", "∆": r"$\Delta$", "′": "$'$", "²": "$^2$", "³": "$^3$", "¹": "$^1$",
    "–": "--", "—": "---", "…": r"\ldots{}", "‘": "`", "’": "'", "“": "``", "”": "''", "\u00a0": "~",
    "✓": r"$\surd$", "✗": r"$\times$", "§": r"\S{}", "¶": r"\P{}", "©": r"\copyright{}", "ß": r"\ss{}",
    "æ": r"\ae{}", "Æ": r"\AE{}", "ø": r"\o{}", "Ø": r"\O{}", "å": r"\aa{}", "Å": r"\AA{}", "œ": r"\oe{}",
    "ł": r"\l{}", "Ł": r"\L{}", "ı": r"\i{}",
}
_UNICODE.update({chr(0x3B1 + i): ("o" if g == "o" else f"$\\{g}$") for i, g in enumerate(_GREEK)})
_UNICODE.update({c: f"$\\{n}$" for c, n in zip("ΓΔΘΛΞΠΣΥΦΨΩ",
                                              "Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega".split())})
_ACCENTS = {"\u0301": "'", "\u0300": "`", "\u0302": "^", "\u0308": '"', "\u0303": "~", "\u0304": "=",
            "\u0327": "c", "\u030c": "v", "\u0306": "u", "\u030a": "r", "\u030b": "H", "\u0328": "k"}


def _char(c: str) -> str:
    if c in _SPECIAL:
        return _SPECIAL[c]
    if c in _UNICODE:
        return _UNICODE[c]
    if c.isascii():
        return c
    base, *marks = unicodedata.normalize("NFD", c)
    if base.isascii() and marks and all(m in _ACCENTS for m in marks):
        out = _char(base)
        for m in marks:
            out = f"\\{_ACCENTS[m]}{{{out}}}"
        return out
    plain = unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode()
    return "".join(_char(p) for p in plain) if plain else "?"


def escape(text: object) -> str:
    """``text`` as LaTeX body text: specials escaped, symbols as math, plain ASCII out."""
    return "".join(_char(c) for c in str(text))  # adjacent math ($\pm$$\tau$) is fine in text mode


_MEAN_STD = re.compile(r"^(-?[\d.]+) ± ([\d.]+)$")


def _number(cell: str) -> str:
    """A numeric cell; "m ± s" prints the std smaller: ``m\\,{\\scriptsize$\\pm$s}``."""
    match = _MEAN_STD.match(cell)
    return f"{match[1]}\\,{{\\scriptsize$\\pm${match[2]}}}" if match else escape(cell)


def _label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9:._-]", "-", label)


def table(columns: Sequence[str], rows: Sequence[Sequence[str]], bold: Sequence[Sequence[bool]], *,
          n_label: int, caption: str, label: str, groups: Sequence[tuple[str, int]] = (),
          rule_before: int | None = None, comment: Sequence[str] = ()) -> str:
    """A booktabs ``table`` float: label columns left-aligned, the others right-aligned; ``groups``
    (text, span) is an optional header row above ``columns`` (``\\multicolumn`` + ``\\cmidrule``);
    bold cells get ``\\bfseries``; a ``\\midrule`` before row ``rule_before`` (the published rows);
    ``comment`` lines go on top as ``%`` comments. Text is escaped here (pass Unicode strings)."""
    align = "l" * n_label + "r" * (len(columns) - n_label)
    lines = [f"% {unicodedata.normalize('NFKD', c).encode('ascii', 'replace').decode()}" for c in comment]
    lines += [r"\begin{table}[htbp]", r"\centering", r"\setlength{\tabcolsep}{4pt}",
              f"\\caption{{{escape(caption)}}}", f"\\label{{{_label(label)}}}",
              r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
              f"\\begin{{tabular}}{{{align}}}", r"\toprule"]
    if groups:
        cells, rules, col = [], [], 1
        for text, span in groups:
            cells.append(escape(text) if span == 1 else f"\\multicolumn{{{span}}}{{c}}{{{escape(text)}}}")
            if text:
                rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        lines += [" & ".join(cells) + r" \\", " ".join(rules)]
    lines.append(" & ".join(escape(c) for c in columns) + r" \\")
    lines.append(r"\midrule")
    for i, (row, marks) in enumerate(zip(rows, bold)):
        if rule_before is not None and i == rule_before and 0 < i:
            lines.append(r"\midrule")
        cells = [(r"\bfseries " if b else "") + (_number(s) if j >= n_label else escape(s))
                 for j, (s, b) in enumerate(zip(row, marks))]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# checking that a .tex compiles (tests, ``ltr report --check-tex``)

_OVERFULL = re.compile(r"Overfull \\hbox \((\d+(?:\.\d+)?)pt too wide\)")


def compile_check(tex: str | Path, timeout: float = 120) -> dict:
    """pdflatex ``tex`` (a file of a table) inside a minimal ``article`` with :data:`PREAMBLE`.

    Returns {"ok": compiled without error, "errors": the log's ``!`` lines, "overfull_pt": widths of
    overfull hboxes, "log": the log}. Raises FileNotFoundError when pdflatex is not installed.
    """
    exe = shutil.which("pdflatex")
    if exe is None:
        raise FileNotFoundError("pdflatex not found (Debian: apt-get install texlive-latex-base "
                                "texlive-latex-recommended)")
    tex = Path(tex).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp) / "doc.tex"
        doc.write_text("\\documentclass{article}\n" + PREAMBLE + "\\begin{document}\n"
                       f"\\input{{{tex.as_posix()}}}\n\\end{{document}}\n")
        proc = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp,
                              capture_output=True, text=True, timeout=timeout, errors="replace")
        log_path = Path(tmp) / "doc.log"
        log = log_path.read_text(errors="replace") if log_path.is_file() else proc.stdout
    errors = [line for line in log.splitlines() if line.startswith("!")]
    return {"ok": proc.returncode == 0 and not errors, "errors": errors,
            "overfull_pt": [float(w) for w in _OVERFULL.findall(log)], "log": log}
