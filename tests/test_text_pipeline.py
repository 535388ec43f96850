"""The CVG-Text text pipeline: OCR -> segmentation -> chain prompting -> quality control -> statistics.

Real RapidOCR on street views drawn by the embedded renderer (a small hand-made region) and on
synthetic images with text drawn in; the OpenAI writer against a chat-completions server on
127.0.0.1 that records every request.
"""

from __future__ import annotations

import csv
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from geotextloc.data import release
from geotextloc.data.embedded import raster
from geotextloc.data.embedded.render_street import LABEL_CLASSES, crop_labels, crop_single_view, render_panorama
from geotextloc.errors import ConfigError, DataError, OfflineError
from geotextloc.lmm import BudgetExhausted, ChatClient
from geotextloc.data import text_pipeline as pipeline
from geotextloc.text import chain, ocr, qc, segment, stats
from geotextloc.text.describe import clip_token_count
from geotextloc.text.offline_writer import write_offline

from conftest import write_release  # noqa: E402
from test_render import EAST_SHOP, LOC, WEST_SHOP, make_region  # noqa: E402

pytest.importorskip("rapidocr_onnxruntime")
API_KEY = "sk-test-SECRET-7731-never-on-disk"


@pytest.fixture(scope="module")
def rendered():
    return render_panorama(make_region(), LOC, 512, 256, labels=True)


def _plate(draw, x, y, text, size=30, fill=(150, 24, 30)):
    f = raster.font(size, bold=True)
    l, t, r, b = draw.textbbox((0, 0), text, font=f)
    draw.rectangle([x, y, x + r - l + 16, y + b - t + 16], fill=fill)
    draw.text((x + 8 - l, y + 8 - t), text, font=f, fill=(255, 255, 255))
    return [x, y, x + r - l + 16, y + b - t + 16]


# ----------------------------------------------------------------------------- 1. OCR


def test_ocr_reads_the_rendered_shop_signs_on_their_sides(rendered):
    """Facing north, the cafe east of the camera is on the right, the pharmacy west on the left."""
    hits = ocr.read_text(rendered, "panorama")
    by_text = {h.text.replace(" ", "").lower(): h for h in hits}
    east = next(h for t, h in by_text.items() if "aurora" in t)
    west = next(h for t, h in by_text.items() if "borealis" in t)
    assert east.direction == "right" and 45 < east.bearing <= 135
    assert west.direction == "left" and -135 <= west.bearing < -45
    assert east.text == EAST_SHOP and west.text == WEST_SHOP


def test_ocr_positions_in_a_single_view_and_across_the_panorama_seam():
    img = Image.new("RGB", (1024, 512), (200, 210, 220))
    draw = ImageDraw.Draw(img)
    _plate(draw, 40, 200, "Leipomo Nord")  # left third of a 90-degree view
    hits = ocr.read_text(img, "single", fov_deg=90)
    assert [(h.text, h.direction) for h in hits] == [("Leipomo Nord", "left")]
    pano = Image.new("RGB", (1024, 512), (200, 210, 220))
    x0, _, x1, _ = _plate(ImageDraw.Draw(pano), 0, 200, "Kirjakauppa")
    rolled = np.roll(np.asarray(pano), 1024 - (x1 - x0) // 2, axis=1)  # half the plate each side of the seam
    hits = ocr.read_text(Image.fromarray(rolled), "panorama")
    assert [h.text for h in hits] == ["Kirjakauppa"]  # read once, whole
    assert hits[0].direction == "back" and abs(abs(hits[0].bearing) - 180) < 10


# ----------------------------------------------------------------------------- 2. segmentation


def test_label_map_changes_no_pixel_and_marks_the_signs(rendered):
    plain = render_panorama(make_region(), LOC, 512, 256)
    assert plain.tobytes() == rendered.tobytes()
    labels = rendered.info["labels"]
    assert labels.shape == (256, 512)
    seg = segment.Segmentation(labels, LABEL_CLASSES, segment.RENDERER, ground_truth=True)
    hits = ocr.read_text(rendered, "panorama")
    kept = segment.drop_on_moving(hits, seg, 512)
    assert kept and all(h.on == "sign" for h in kept)
    assert seg.class_at([0, 250, 511, 255]) == "vehicle"  # the capture car's roof at the nadir
    summary = segment.summarise(seg, "panorama", image=rendered)
    assert summary["ground_truth"] is True and summary["source"] == "renderer"
    assert {"left", "right"} <= set(summary["buildings"])  # the two shop buildings
    assert summary["road"]["width_m"] == pytest.approx(7.0, abs=2.5)  # a 7 m street
    crop = crop_single_view(rendered, LOC.heading, 90)
    assert crop_labels(labels, rendered.info["heading_deg"], LOC.heading, 90).shape == (crop.height, crop.width)


def test_text_on_a_vehicle_is_dropped_and_never_written():
    img = Image.new("RGB", (1024, 512), (190, 190, 185))
    draw = ImageDraw.Draw(img)
    shop = _plate(draw, 620, 150, "Kahvila Savu", fill=(24, 70, 48))
    bus = _plate(draw, 120, 300, "Pikavuoro Tampere", fill=(30, 90, 180))
    names = ("building", "vehicle", "other")
    labels = np.zeros((512, 1024), np.uint8)
    labels[280:380, 80:500] = 1  # the bus around its advertisement
    seg = segment.Segmentation(labels, names, "test", ground_truth=True)
    hits = ocr.read_text(img, "single", fov_deg=90)
    assert {h.text for h in hits} == {"Kahvila Savu", "Pikavuoro Tampere"}
    kept = segment.drop_on_moving(hits, seg, 1024)
    assert [h.text for h in kept] == ["Kahvila Savu"]
    dropped = next(h for h in hits if h.text == "Pikavuoro Tampere")
    assert dropped.dropped and "vehicle" in dropped.dropped and dropped.on == "vehicle"

    facts = {"name": "60.1,24.9_x1s.jpg", "view": "single", "city": "T", "lat": 60.1, "lon": 24.9, "heading_deg": None,
             "ocr": [h.to_dict() for h in hits], "segments": segment.summarise(seg, "single"),
             "segmentation": {"source": "test", "ground_truth": True}}
    for attempt in range(5):
        text = write_offline(facts, attempt=attempt).text
        assert "Pikavuoro" not in text
    parts = {"road": "A road.", "buildings": "A bus says “Pikavuoro Tampere” on the left.", "environment": "Busy area."}
    assert any("moving object" in p for p in qc.RuleReviewer().review(facts, parts))


def _review(text_hits, parts):
    """The rule-based self-review of ``parts`` for a photo whose OCR read ``text_hits`` ((text, direction))."""
    facts = {"view": "single", "ocr": [{"text": t, "direction": d, "dropped": None} for t, d in text_hits]}
    return qc.RuleReviewer().review(facts, parts)


GOOD = {"road": "A wide street runs ahead.", "buildings": "A shop sign reads “Kahvila Savu” on the right.",
        "environment": "A quiet residential neighbourhood."}


@pytest.mark.parametrize("change, problem", [
    ({}, None),  # a faithful text passes
    ({"buildings": "A shop sign reads “Kahvila Sauna” on the right."}, "which OCR did not read"),
    ({"buildings": "A shop sign reads “Kahvila Savu” on the left."}, "puts 'Kahvila Savu' left"),
    ({"road": "Tall blocks of flats rise on both sides."}, "the road part is off its topic"),
])
def test_each_self_review_rule_fails_its_own_fault_only(change, problem):
    problems = _review([("Kahvila Savu", "right")], GOOD | change)
    assert problems == [] if problem is None else any(problem in p for p in problems), problems


def test_the_offline_writer_gives_the_same_text_for_the_same_seed_name_and_attempt():
    facts = {"name": "60.1,24.9_x1s.jpg", "view": "single", "city": "T", "lat": 60.1, "lon": 24.9,
             "heading_deg": None, "ocr": [{"text": "Kahvila Savu", "direction": "right", "dropped": None,
                                            "colour": "green", "score": 0.99}],
             "segments": None, "segmentation": {"source": None, "problem": "no segmenter"}}
    first = write_offline(facts, seed=0, attempt=0).text
    assert write_offline(facts, seed=0, attempt=0).text == first  # no state carried between calls
    assert {write_offline(facts, seed=0, attempt=a).text for a in range(1, 4)} - {first}  # a retry is another text


def test_ade20k_names_map_onto_the_pipeline_classes():
    table = segment.ade_to_classes({0: "wall", 1: "building, edifice", 2: "sky", 6: "road, route", 20: "car, auto",
                                    43: "signboard, sign", 12: "person, individual", 4: "tree", 9: "bed"})
    names = {k: segment.CLASSES[table[k]] for k in (0, 1, 2, 6, 20, 43, 12, 4, 9)}
    assert names == {0: "building", 1: "building", 2: "sky", 6: "road", 20: "vehicle", 43: "sign", 12: "person",
                     4: "tree", 9: "other"}


def test_a_segmentation_model_that_cannot_be_loaded_is_one_offline_error(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="--segmenter renderer"):
        segment.TransformersSegmenter(str(tmp_path / "not" / "a" / "cached-model"))


# ----------------------------------------------------------------------------- 3. chain (OpenAI-compatible server)


class RecordingChat:
    """A chat-completions endpoint on 127.0.0.1 that records each request and answers a chain
    step with a sentence naming the step, and a review with a pass."""

    def __init__(self):
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"auth": self.headers.get("Authorization"), "body": body})
                system = body["messages"][0]["content"]
                last = body["messages"][-1]["content"]
                last = last if isinstance(last, str) else last[-1]["text"]
                if system.startswith("You check a description"):
                    content = json.dumps({"pass": True, "problems": []})
                else:
                    step = next(s for s in chain.STEPS if chain.STEP_PROMPTS[s] == last)
                    content = {"road": "I stand on a wide road with pavements on both sides and a tram line "
                                       "in the middle; a side street opens to the right.",
                               "buildings": "Five-storey blocks line the left side of the street, with a bakery "
                                            "on the ground floor; low houses stand on the right.",
                               "environment": "The area feels residential and green, with tall trees behind me "
                                              "and a small park to the right."}[step]
                payload = json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": content}}],
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def steps(self) -> list[str]:
        out = []
        for r in self.requests:
            last = r["body"]["messages"][-1]["content"]
            last = last if isinstance(last, str) else last[-1]["text"]
            out.append(next((s for s in chain.STEPS if chain.STEP_PROMPTS[s] == last), "review"))
        return out


@pytest.fixture
def chat(monkeypatch):
    server = RecordingChat()
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    yield server
    server.httpd.shutdown()


@pytest.fixture
def tiny_release(tmp_path):
    return write_release(tmp_path / "rel", versions=("NewYork", "NewYork-photos"), n=(2, 1),
                         kinds=("satellite", "osm", "street"), size=32)


def _run(rel, out, chat, budget, settings=None):
    settings = settings or pipeline.DescribeSettings(writer="openai", model="test-lmm", segmenter="none")
    return pipeline.describe_release(rel, out, versions=["NewYork"], settings=settings, budget=budget,
                                     base_url=chat.url, progress=False)


def test_openai_chain_order_cache_budget_and_no_key_on_disk(tmp_path, tiny_release, chat):
    out = tmp_path / "new"
    first = _run(tiny_release, out, chat, budget=6)  # 4 requests per record: 3 steps + review
    assert first.stopped and "budget" in first.stopped and first.described == 1
    assert chat.steps() == ["road", "buildings", "environment", "review", "road", "buildings"]
    assert all(r["auth"] == f"Bearer {API_KEY}" for r in chat.requests)
    step2 = chat.requests[1]["body"]["messages"]  # the conversation so far goes with each step
    assert [m["role"] for m in step2] == ["system", "user", "assistant", "user"]
    assert step2[2]["content"].startswith("I stand on a wide road")
    done = json.loads((out / "CVG-text" / "NewYork" / "train.json").read_text()) | \
        json.loads((out / "CVG-text" / "NewYork" / "test.json").read_text())
    assert len(done) == 1  # what was done is kept, readable
    text = next(iter(done.values()))
    assert text.index("wide road") < text.index("Five-storey") < text.index("residential")

    n = len(chat.requests)
    second = _run(tiny_release, out, chat, budget=100)  # resumes: the 2 cached steps cost nothing
    assert second.stopped is None and second.described == 2 and second.skipped_done == 1
    assert chat.steps()[n:] == ["environment", "review", "road", "buildings", "environment", "review"]
    n = len(chat.requests)
    other = tmp_path / "again"
    third = _run(tiny_release, other, chat, budget=1)  # a fresh folder, same answers: cache misses
    assert third.stopped  # budget 1 is spent at once: stopped cleanly, no crash
    contents = release.read_release(out, versions=["NewYork"])
    assert len(contents.records) == 3 and all("Five-storey" in r.text for r in contents.records)

    settings = pipeline.DescribeSettings(writer="openai", model="test-lmm", segmenter="none")
    writer, _, _ = pipeline.make_writer(settings, out, budget=0, base_url=chat.url)  # the run's client, no budget
    facts = json.loads(next((out / "describe" / "records").glob("*.json")).read_text())["facts"]
    result = writer.write(facts, tiny_release / "NewYork-street" / facts["name"])
    assert result.requests == 0 and len(chat.requests) == n + 1  # all from the cache; budget 0 untouched

    for folder in (out, other, tiny_release):
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert API_KEY.encode() not in path.read_bytes(), path


def test_budget_exhausted_mid_chain_raises_for_the_caller(tmp_path, chat):
    client = ChatClient(model="m", base_url=chat.url, cache_dir=tmp_path / "c", budget=2)
    facts = {"name": "x_y", "view": "single", "lat": 1.0, "lon": 2.0, "ocr": [], "segments": None}
    with pytest.raises(BudgetExhausted):
        chain.OpenAIWriter(client, send_image=False).write(facts)
    assert len(chat.requests) == 2


# ----------------------------------------------------------------------------- 4. quality control


def test_format_filter_rejects_placeholders_missing_parts_and_length():
    good = {"road": "I stand on a wide road.", "buildings": "Tall blocks line the left side.",
            "environment": "The area is busy and commercial, full of shops and offices around me."}
    assert qc.format_check(good, "single") == []
    assert any("missing" in p for p in qc.format_check(good | {"environment": ""}, "single"))
    assert any("placeholder" in p for p in qc.format_check(good | {"road": "I stand on {road_name}."}, "single"))
    tiny = {"road": "Road.", "buildings": "B.", "environment": "E."}
    assert any("length" in p for p in qc.format_check(tiny, "panorama"))
    assert any("coordinates" in p for p in qc.format_check(good | {"road": "I am at 40.75290377, -73.97958."}, "single"))


def test_review_sample_export_import_round_trip_and_failed_texts_are_rewritten(tmp_path, tiny_release):
    out = tmp_path / "new"
    settings = pipeline.DescribeSettings(segmenter="none", review_share=1.0)
    report = pipeline.describe_release(tiny_release, out, settings=settings, progress=False)
    assert report.described == 6 and report.stopped is None
    csv_path, jsonl_path = report.review
    rows = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    passed = [json.loads(p.read_text()) for p in (out / "describe" / "records").glob("*.json")]
    passed = {r["name"] for r in passed if r["qc"]["format_ok"] and r["qc"]["review_ok"]}
    assert len(rows) >= 2 and {r["name"] for r in rows} == passed  # share 1.0: every text that passed QC
    assert all(r["verdict"] == "" and Path(r["image"]).is_file() for r in rows)
    assert [json.loads(line)["name"] for line in jsonl_path.read_text().splitlines()] == [r["name"] for r in rows]
    rows[0]["verdict"], rows[0]["note"] = "fail", "wrong side"
    rows[1]["verdict"] = "pass"
    with open(tmp_path / "filled.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert qc.import_review(tmp_path / "filled.csv") == {
        rows[0]["name"]: {"verdict": "fail", "note": "wrong side", "text": rows[0]["text"]},
        rows[1]["name"]: {"verdict": "pass", "note": "", "text": rows[1]["text"]}}
    assert pipeline.import_verdicts(out, tmp_path / "filled.csv") == {"pass": 1, "fail": 1, "stale": 0, "unknown": 0}
    again = pipeline.describe_release(tiny_release, out, settings=settings, progress=False)
    assert again.described == 1 and again.skipped_done == 5  # only the text failed by a human is written again
    rec = json.loads(pipeline.record_path(out, rows[0]["name"]).read_text())
    assert rec["attempt"] >= 1 and rec["history"][0]["qc"]["human"] == "fail" and rec["text"] != rows[0]["text"]
    assert again.pass_rates["human"] == {"checked": 1, "passed": 1, "pass_rate": 1.0}
    rows[2]["verdict"] = "maybe"
    with open(tmp_path / "bad.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match="pass or fail"):
        qc.import_review(tmp_path / "bad.csv")


def test_offline_copy_is_a_release_with_linked_images_and_resumes(tmp_path, tiny_release):
    out = tmp_path / "new"
    settings = pipeline.DescribeSettings(segmenter="none")
    pipeline.describe_release(tiny_release, out, settings=settings, progress=False)
    assert (out / "NewYork-street").is_symlink() and (out / "NewYork-photos-satellite").is_symlink()
    new = release.read_release(out)
    old = release.read_release(tiny_release)
    assert sorted(r.name for r in new.records) == sorted(r.name for r in old.records)
    assert all(r.images["street"].resolve() == (tiny_release / f"{r.version}-street" / r.name).resolve()
               for r in new.records)
    again = pipeline.describe_release(tiny_release, out, settings=settings, progress=False)
    assert again.described == 0 and again.skipped_done == 6
    with pytest.raises(ConfigError, match="other settings"):
        pipeline.describe_release(tiny_release, out, settings=pipeline.DescribeSettings(segmenter="none", seed=1),
                                  progress=False)


# ----------------------------------------------------------------------------- 5. statistics


def test_statistics_equal_hand_computed_values():
    texts = ["the cat sat", "the dog ran far", "a a b"]
    assert [clip_token_count(t) for t in texts] == [5, 6, 5]  # one BPE token per word, + start and end
    row = stats.statistics(texts)
    assert row["mean_tokens"] == pytest.approx(16 / 3, abs=0.05)
    assert row["type_token_ratio"] == pytest.approx(round((1 + 1 + 2 / 3) / 3, 3))  # per text, averaged
    # TF-IDF (smooth idf = ln((1+n)/(1+df)) + 1), cosine, off-diagonal mean over the 3 pairs
    idf = {w: math.log(4 / (1 + df)) + 1 for w, df in {"the": 2, "cat": 1, "sat": 1, "dog": 1, "ran": 1, "far": 1,
                                                      "a": 1, "b": 1}.items()}
    v1 = {"the": idf["the"], "cat": idf["cat"], "sat": idf["sat"]}
    v2 = {"the": idf["the"], "dog": idf["dog"], "ran": idf["ran"], "far": idf["far"]}
    norm = lambda v: math.sqrt(sum(x * x for x in v.values()))  # noqa: E731
    cos12 = idf["the"] ** 2 / (norm(v1) * norm(v2))
    assert row["inter_text_similarity"] == pytest.approx(round(cos12 / 3, 3))  # pairs (1,3), (2,3) share nothing
    long = " ".join(["street"] * 80) + " Kahvila Savu"
    short_cue = "Kahvila Savu " + " ".join(["street"] * 80)
    row = stats.statistics([long, short_cue, "the cat sat"], cues=[["Kahvila Savu"]] * 3)
    assert row["share_over_77"] == pytest.approx(round(2 / 3, 3))
    assert row["share_cue_after_77"] == pytest.approx(round(1 / 3, 3))  # only the cue at the end is cut off
    import pandas as pd

    table = stats.text_statistics(pd.DataFrame({"city": ["A", "A", "B"], "text": texts}))
    assert list(table.index) == ["A", "B", "all"] and table.loc["B", "type_token_ratio"] == pytest.approx(0.667)
