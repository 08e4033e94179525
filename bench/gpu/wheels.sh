#!/usr/bin/env bash
# Download here the wheels that bench/gpu/check.sh installs on the GPU machine, which has no
# package registry: exactly the locked dependencies it lacks (python -m bench.gpu.env needed),
# for CPython 3.12 on manylinux x86_64 (the device notes' pip recipe). A package published only as
# an sdist (antlr4-python3-runtime) is built into a wheel here, from the locked sdist (sha256
# checked). The wheels land in .whl/ (git-ignored); a call of the device tool carries `.whl`.
#
#   bash bench/gpu/wheels.sh          (PIP="python3 -m pip" by default; uv runs the checks)
set -euo pipefail
cd "$(dirname "$0")/../.."
PIP=${PIP:-python3 -m pip}
ENV="uv run --frozen python -m bench.gpu.env"
DEST=.whl
PLATFORMS=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
sdists=$(mktemp -d)
trap 'rm -rf "$sdists"' EXIT
for spec in $($ENV needed); do
    if ! $PIP download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" -d "$DEST" "$spec" 2>/dev/null; then
        echo "$spec: no wheel published; building one from the locked sdist"
        $PIP download -q --no-deps --no-binary=:all: -d "$sdists" "$spec"
        $ENV sdist "${spec%%==*}" "$sdists"/*
        $PIP wheel -q --no-deps -w "$DEST" "$sdists"/*
        rm -f "$sdists"/*
    fi
done
$ENV check "$DEST"
du -sh "$DEST"
