# geotextloc — the two commands in the README are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
GTL    := $(BIN)/geotextloc
STAMP  := $(VENV)/.installed
DATA   ?= data/embedded
SMOKE_DATA ?= data/embedded-smoke
WORKERS ?= 2

.PHONY: install demo data data-smoke train evaluate test test-fast reports smoke-reports clean osm-stack osm-compare

install: $(STAMP)

$(STAMP): pyproject.toml requirements-towers.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ocr,llm,notebook]'
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-towers.txt
	touch $@

# The embedded default dataset, built once (the builder resumes and skips finished locations).
$(DATA)/.built-v4: $(STAMP)
	$(GTL) data build-embedded --out $(DATA) --workers $(WORKERS)
	touch $@
# Its dense training-only places (<City>-dense), which stage 1 of the tiny model reads (about 2 min).
$(DATA)/.dense-v4: $(DATA)/.built-v4
	$(GTL) data densify --out $(DATA) --workers $(WORKERS)
	touch $@
data: $(DATA)/.dense-v4

$(SMOKE_DATA)/.built-v4: $(STAMP)
	$(GTL) data build-embedded --out $(SMOKE_DATA) --max-locations 48 --size 128 --pano-width 256 --workers $(WORKERS)
	$(GTL) data densify --out $(SMOKE_DATA) --max-places 24 --workers $(WORKERS)
	touch $@
data-smoke: $(SMOKE_DATA)/.built-v4

# The tiny model (notebook 02): the pretrained towers (MiniLM text, ImageNet MobileNetV2 image, from the
# PyPI wheels of requirements-towers.txt), locked but for the image tower's last stages, EPE to 300 text
# positions. The run folder is that of the experiment grid (geotextloc experiments, notebooks 02-04), and
# --resume continues an interrupted run or skips a finished one.
TINY_RUN := runs/tiny/osm/interpolate-full/seed0
train: data
	$(GTL) train --config configs/tiny/crosstext2loc.yaml --resume data_root=$(DATA) out_dir=$(TINY_RUN)

evaluate: train
	for city in Helsinki Kouvola Monaco; do \
		$(GTL) evaluate --checkpoint $(TINY_RUN)/best.pt --data $(DATA) --city $$city --view osm --out reports/demo || exit 1; \
	done

# Main job: install, build the embedded data, train the tiny model, evaluate, execute the quickstart.
demo: evaluate
	$(GTL) report notebooks/00_quickstart.ipynb --profile tiny --data-dir $(DATA)
	@echo "demo done: see reports/demo/ and reports/00_quickstart.html"

# Tests, including every notebook executed in the smoke profile (tests/test_notebooks.py).
test: install
	$(BIN)/python -m pytest -q -n $(WORKERS) --durations=15

test-fast: install
	$(BIN)/python -m pytest -q -n $(WORKERS) -m "not slow"

# Every notebook in the tiny profile into reports/ (committed).
reports: data
	$(GTL) report notebooks/*.ipynb --profile tiny --data-dir $(DATA)

# The OpenStreetMap rendering stack (osm2pgsql, PostgreSQL + PostGIS, mapnik, openstreetmap-carto, fonts) from
# Debian's packages, for `geotextloc data render-osm` and `build-embedded --osm-renderer carto`; geotextloc
# starts and stops its own PostgreSQL cluster when it renders. Needs root or sudo.
osm-stack: $(STAMP)
	bash scripts/install-osm-stack.sh
	$(BIN)/python -c "from geotextloc.data.osm_render import find_stack; s = find_stack(); print('osm-stack ready:', s.versions)"

# The two OSM renderers side by side for each embedded region (reports/figures/osm_renderers_<Region>.png).
osm-compare: osm-stack $(DATA)/.built-v4
	$(GTL) data compare-osm-renderers --data $(DATA) --to reports/figures

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
