"""Step 4 of the CVG-Text text pipeline: quality control.

CVG-Text filters its texts in three stages: a format filter, a GPT self-review, and an expert
review of 20 % of the samples (77.6 % passed). Here:

1. :func:`format_check` - length in CLIP tokens within :data:`LENGTH`, all three chain parts
   present, no placeholders or template debris (``{...}``, ``<...>``, ``[...]``, ``TODO``,
   ``N/A``, "as an AI"), no markdown, no coordinates, ends like a sentence, no sentence twice;
2. self-review: :class:`LMMReviewer` asks the LMM (through :class:`geotextloc.lmm.ChatClient`)
   whether the text is faithful to the extracted facts and follows the chain, answering JSON
   ``{"pass": bool, "problems": [str]}``; offline, :class:`RuleReviewer` stands in for it -
   **a rule-based reviewer, not an LMM**, labelled so in every output: every name in quotes
   must be an OCR text of the image, each OCR text named must be placed in a direction the
   image shows it in (when the sentence names one), no text read off a moving object may
   appear, and each part must stay on its topic;
3. human review: :func:`export_review` writes a seeded ``share`` (20 %) of the texts that
   passed 1-2 as CSV and JSONL (image path, text, parts, OCR text, empty ``verdict`` and
   ``note``); :func:`import_review` reads the filled-in file back (``pass`` / ``fail``).

:func:`pass_rates` reports each stage's pass rate (of the texts that reached it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

from geotextloc.errors import DataError
from geotextloc.files import atomic_path
from geotextloc.text.chain import STEPS
from geotextloc.text.describe import clip_token_count

LENGTH = {"panorama": (40, 300), "single": (25, 300)}  # CLIP tokens, start/end included
PLACEHOLDERS = re.compile(r"\{[^}]*\}|<[^>]*>|\[[^\]]*\]|\bTODO\b|\bN/A\b|\bas an AI\b|\blorem\b|\bundefined\b",
                          re.IGNORECASE)
MARKDOWN = re.compile(r"\*\*|##|```|__|^\s*([-*•]|\d+[.)])\s")  # emphasis, headings, code; a list at a part's start
COORDINATES = re.compile(r"-?\d{1,3}\.\d{4,}")
RULE_REVIEWER = "rule-based stand-in for the LMM self-review (offline; not an LMM)"
VERDICTS = ("pass", "fail")
REVIEW_COLUMNS = ("name", "version", "split", "view", "image", "text", "road", "buildings", "environment",
                  "ocr_text", "writer", "verdict", "note")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def format_check(parts: dict[str, str], view: str) -> list[str]:
    """Problems of a text's form (empty: it passes the format filter)."""
    problems = []
    missing = [s for s in STEPS if not parts.get(s, "").strip()]
    if missing:
        problems.append(f"missing part(s): {', '.join(missing)}")
    text = " ".join(parts.get(s, "").strip() for s in STEPS).strip()
    low, high = LENGTH[view]
    n = clip_token_count(text)
    if not low <= n <= high:
        problems.append(f"length {n} CLIP tokens outside {low}-{high}")
    if PLACEHOLDERS.search(text):
        problems.append(f"placeholder or debris: {PLACEHOLDERS.search(text).group(0)!r}")
    if any(MARKDOWN.search(parts.get(s, "")) for s in STEPS):
        problems.append("markdown or list formatting")
    if COORDINATES.search(text):
        problems.append("coordinates in the text")
    if text and text[-1] not in ".!?”\"'":
        problems.append("does not end with a full sentence")
    sents = [s.lower() for s in _sentences(text)]
    if len(set(sents)) < len(sents):
        problems.append("a sentence appears twice")
    return problems


# ----------------------------------------------------------------------------- self-review

TOPIC_WORDS = {  # a part must not be about another part's topic only
    "road": re.compile(r"\b(road|street|avenue|lane|carriageway|pavement|sidewalk|footpath|footway|kerb|curb|"
                       r"junction|crossing|intersection|thoroughfare|roadway|tarmac|asphalt|pole|post|way|walkway|"
                       r"traffic|verge|route)s?\b", re.I),
    "buildings": re.compile(r"\b(building|house|home|block|facade|fa\u00e7ade|storey|story|stories|floor|sign|shop|"
                            r"store|storefront|shopfront|board|plate|lettering|nameplate|fascia|level|structure|"
                            r"built|signboard|cottage|bungalow|housing|high-rise|tower|flat|apartment|walk-up|"
                            r"shed|landmark|hotel|restaurant|cafe|bar|church|office)s?\b", re.I),
    "environment": re.compile(r"\b(area|neighbourhood|neighborhood|district|surroundings|green|greenery|trees?|"
                              r"grass|water|sky|residential|commercial|quarter|place|setting|landmark|spot|scene|"
                              r"businesses|shops|shopping|housing|homes|foliage|sea|lake|river|park|open|"
                              r"street|city|town|suburb|urban|retail|vegetation|quiet|busy|land|estate|commerce|settlement|"
                              r"skies|heaven|rooftops|daylight|peaceful|people|live|gaps|emptiness)\b", re.I),
}
DIRECTION_WORDS = {
    "left": re.compile(r"\bleft", re.I), "right": re.compile(r"\bright", re.I),
    "front": re.compile(r"\b(ahead|front|forward|facing me|centre|center|middle|further along|before me)", re.I),
    "back": re.compile(r"\b(behind|back|rear|shoulder)", re.I),
}


class RuleReviewer:
    """The offline stand-in for the LMM self-review (module docstring); its verdicts say so."""

    name = RULE_REVIEWER

    def review(self, facts: dict, parts: dict[str, str], image_path=None) -> list[str]:
        problems = []
        kept = [h for h in facts["ocr"] if not h.get("dropped")]
        texts = {h["text"] for h in kept}
        text = " ".join(parts.get(s, "") for s in STEPS)
        for quoted in re.findall(r"“([^”]+)”|\"([^\"]+)\"", text):
            q = (quoted[0] or quoted[1]).rstrip("…")
            if not any(q == t or t.startswith(q) for t in texts):
                problems.append(f"names {q!r}, which OCR did not read in the image")
        for h in facts["ocr"]:
            if h.get("dropped") and h["text"] in text:
                problems.append(f"uses {h['text']!r}, read off a moving object")
        where = {}
        for h in kept:
            where.setdefault(h["text"], set()).add(h["direction"])
        for sent in _sentences(text):
            said = {d for d, rx in DIRECTION_WORDS.items() if rx.search(sent)}
            for name, dirs in where.items():
                inside = any(name != other and name in other and other in sent for other in where)
                if name in sent and not inside and len(said) == 1 and not said & dirs:
                    problems.append(f"puts {name!r} {next(iter(said))}, the image shows it {'/'.join(sorted(dirs))}")
        for step in STEPS:
            if parts.get(step) and not TOPIC_WORDS[step].search(parts[step]):
                problems.append(f"the {step} part is off its topic")
        return problems


REVIEW_PROMPT = """You check a description written for a street-level image. Reply with JSON only: \
{"pass": true|false, "problems": [short strings]}. Fail it when it names a shop, sign or street that \
the extracted OCR text does not contain, puts something in a direction the facts contradict, uses text \
read off a vehicle, leaves out one of the parts road features / building landmarks / overall \
environment, or is not fluent English."""


class LMMReviewer:
    """The self-review by an LMM through ``client`` (a :class:`geotextloc.lmm.ChatClient`),
    answers cached; raises :class:`geotextloc.lmm.BudgetExhausted` when the budget is spent."""

    def __init__(self, client):
        self.client = client
        self.name = f"openai:{client.model}"

    def review(self, facts: dict, parts: dict[str, str], image_path=None) -> list[str]:
        from geotextloc.text.chain import facts_for_prompt

        body = {"facts": facts_for_prompt(facts), "dropped_ocr_text": [h["text"] for h in facts["ocr"] if h.get("dropped")],
                "description": {s: parts.get(s, "") for s in STEPS}}
        messages = [{"role": "system", "content": REVIEW_PROMPT},
                    {"role": "user", "content": json.dumps(body, ensure_ascii=False, sort_keys=True)}]
        key = self.client.cache_key(messages)
        answer = self.client.cached(key)
        if not isinstance(answer, str):
            answer = self.client.complete(messages)
            self.client.remember(key, answer)
        try:
            verdict = json.loads(re.sub(r"^```(json)?|```$", "", answer.strip()).strip())
            ok, problems = bool(verdict["pass"]), [str(p) for p in verdict.get("problems", [])]
        except (ValueError, KeyError, TypeError):
            return ["the reviewer's answer was not the JSON asked for"]
        return [] if ok else (problems or ["failed by the reviewer"])


# ----------------------------------------------------------------------------- human review


def in_sample(name: str, share: float, seed: int = 0) -> bool:
    """Whether ``name`` is in the seeded human-review sample of about ``share`` of the texts."""
    h = int(hashlib.sha256(f"review:{seed}:{name}".encode()).hexdigest()[:12], 16) / float(1 << 48)
    return h < share


def export_review(rows: list[dict], folder: Path) -> tuple[Path, Path]:
    """``folder/sample.csv`` and ``sample.jsonl`` with :data:`REVIEW_COLUMNS` (``verdict`` and
    ``note`` empty, for the reviewer to fill in). A verdict already given is kept."""
    folder = Path(folder)
    csv_path, jsonl_path = folder / "sample.csv", folder / "sample.jsonl"
    rows = [{c: r.get(c, "") for c in REVIEW_COLUMNS} for r in rows]
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=REVIEW_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    with atomic_path(jsonl_path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return csv_path, jsonl_path


def import_review(path: Path) -> dict[str, dict]:
    """Verdicts from a filled-in review file (``.csv`` or ``.jsonl``): name -> {verdict, note,
    text}. Rows with an empty verdict are left out; any other verdict than pass/fail is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: review file not found; fill in the verdict column of describe/review/sample.csv")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise DataError(f"{path}: line {i} is not JSON; fix or remove it") from None
    out = {}
    for i, row in enumerate(rows, start=1):
        if "name" not in row or "verdict" not in row:
            raise DataError(f"{path}: row {i} has no name/verdict column; export the sample again")
        verdict = str(row["verdict"] or "").strip().lower()
        if not verdict:
            continue
        if verdict not in VERDICTS:
            raise DataError(f"{path}: row {i} ({row['name']}): verdict {row['verdict']!r}; write pass or fail")
        out[row["name"]] = {"verdict": verdict, "note": str(row.get("note") or ""), "text": row.get("text", "")}
    return out


def pass_rates(records: list[dict]) -> dict:
    """Per stage: texts checked, passed, and the pass rate, over first attempts (as the paper
    reports them) and over the final texts."""
    def stage(recs, key):
        seen = [r for r in recs if r.get(key) is not None]
        ok = sum(1 for r in seen if r[key])
        return {"checked": len(seen), "passed": ok, "pass_rate": round(ok / len(seen), 4) if seen else None}

    first = [r["attempts"][0] for r in records if r.get("attempts")]
    final = [r["qc"] for r in records if r.get("qc")]
    human = [r["qc"] for r in records if r.get("qc", {}).get("human") in VERDICTS]
    return {
        "first_attempt": {"format": stage(first, "format_ok"), "self_review": stage(first, "review_ok")},
        "final": {"format": stage(final, "format_ok"), "self_review": stage(final, "review_ok")},
        "human": {"checked": len(human), "passed": sum(1 for q in human if q["human"] == "pass"),
                  "pass_rate": round(sum(1 for q in human if q["human"] == "pass") / len(human), 4) if human else None},
    }
