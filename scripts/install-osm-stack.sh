#!/usr/bin/env bash
# The OpenStreetMap rendering stack for `geotextloc data render-osm` and
# `geotextloc data build-embedded --osm-renderer carto`, from Debian's packages (Debian 12 / Ubuntu):
#   osm2pgsql                      OSM extract -> PostGIS, in openstreetmap-carto's schema
#   postgresql, postgresql-NN-postgis-3   the database the style reads (geotextloc starts a private
#                                  cluster of its own in a folder it controls; nothing system-wide)
#   openstreetmap-carto            the standard OSM style, compiled for mapnik (style.xml), with its
#                                  osm2pgsql .style/.lua and indexes.sql
#   python3-mapnik                 mapnik for the system Python (geotextloc runs it as a subprocess)
#   fonts-noto-cjk fonts-noto-hinted fonts-noto-unhinted fonts-unifont fonts-dejavu-core fonts-hanazono
#                                  the fonts the style names (labels in every script)
# About 110 MB to download, 460 MB installed, under a minute on a warm mirror.
# Run as root or with sudo. Idempotent: a second run installs nothing new.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive  # openstreetmap-carto asks for a database name: keep its default

$SUDO apt-get update -qq
# The PostGIS package is named after the PostgreSQL major version the distribution ships.
PG_MAJOR="$(apt-cache depends postgresql 2>/dev/null | sed -n 's/.*Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -n 1)"
if [ -z "$PG_MAJOR" ]; then
    echo "install-osm-stack: apt knows no 'postgresql' package; is this Debian or Ubuntu with apt sources?" >&2
    exit 1
fi
$SUDO apt-get install -y -qq --no-install-recommends \
    osm2pgsql \
    postgresql "postgresql-${PG_MAJOR}-postgis-3" \
    openstreetmap-carto \
    python3-mapnik \
    fonts-noto-cjk fonts-noto-hinted fonts-noto-unhinted fonts-unifont fonts-dejavu-core fonts-hanazono \
    util-linux

echo "install-osm-stack: installed osm2pgsql, PostgreSQL ${PG_MAJOR} + PostGIS 3, openstreetmap-carto, python3-mapnik and fonts"
