#!/bin/sh
# The runtime on aarch64 (Jetson boards, Arm servers), emulated with qemu-user on an x86-64 Debian host.
#
#   sh benchmarks/aarch64/run.sh [WORKDIR]      (as root, from the repository root; default WORKDIR: /tmp/meltok-arm64)
#
# 1. an arm64 Debian 12 root from Debian's packages (debootstrap --foreign: the packages are unpacked,
#    no arm64 code runs at build time, so no binfmt_misc registration is needed);
# 2. aarch64 wheels from PyPI for the runtime and its tests (numpy, onnxruntime, soundfile, soxr, click, pytest),
#    installed into the root by the host's pip (--platform, --only-binary). onnxruntime is pinned to
#    ORT_VERSION (default 1.22.0): the 1.32.0 aarch64 wheel dies with SIGSEGV on import under Debian 12's
#    qemu-user 7.2 (with QEMU_CPU max, cortex-a72 or neoverse-n1 alike), 1.22.0 and 1.19.2 import; whether
#    1.32 runs on real Arm hardware was not checked here;
# 3. the runtime's tests that need no PyTorch, then the README's main job with the shipped bundle
#    (meltok-rt encode tests/data/music.flac, decode), then meltok-rt doctor and a short meltok-rt bench, every process an arm64 python3.11 under
#    qemu-aarch64-static -L ROOT. Tests that export bundles need PyTorch and are not run; tests that start
#    a Python subprocess need binfmt_misc (absent in containers) and are deselected.
set -eu
WORK=${1:-/tmp/meltok-arm64}
ROOTFS=$WORK/rootfs
SITE=$ROOTFS/opt/meltok-site
REPO=$(pwd)
ORT_VERSION=${ORT_VERSION:-1.22.0}
command -v qemu-aarch64-static >/dev/null || { echo "needs qemu-aarch64-static: apt-get install qemu-user-static"; exit 1; }
command -v debootstrap >/dev/null || apt-get install -y debootstrap
if [ ! -d "$ROOTFS/debootstrap" ] && [ ! -x "$ROOTFS/usr/bin/python3.11" ]; then
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3.11,libpython3.11-stdlib,libffi8,libssl3,zlib1g \
        bookworm "$ROOTFS" http://deb.debian.org/debian
fi
if [ ! -x "$ROOTFS/usr/bin/python3.11" ]; then  # unpack every downloaded package (no arm64 maintainer scripts run)
    for deb in "$ROOTFS"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOTFS"; done
fi
mkdir -p "$SITE"
python3 -m pip install --quiet --target "$SITE" --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_17_aarch64 --implementation cp --python-version 3.11 --only-binary=:all: --upgrade \
    "numpy>=1.24" "onnxruntime==$ORT_VERSION" "soundfile>=0.12" "soxr>=0.3" "click>=8.1" "pytest>=7" "hypothesis>=6"
ln -sfn "$REPO/runtime" "$SITE/meltok_runtime"   # the source tree's runtime package, by its import name
PY="qemu-aarch64-static -L $ROOTFS $ROOTFS/usr/bin/python3.11"
export PYTHONPATH="$SITE" PYTHONDONTWRITEBYTECODE=1
echo "== machine as Python sees it"
$PY -c "import platform, numpy, onnxruntime; print(platform.machine(), 'numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)"
echo "== runtime tests that need no PyTorch"
# Deselected: the tests of these files that export a bundle with PyTorch (tiny_model), the one that starts an
# arm64 Python subprocess (needs binfmt_misc), and the Hypothesis fuzz test, whose input generation trips
# Hypothesis's too_slow health check under emulation.
$PY -m pytest -q -p no:cacheprovider --rootdir "$REPO" \
    tests/runtime/test_tokenfile.py tests/runtime/test_windowing.py tests/runtime/test_audio.py \
    tests/runtime/test_melfilters.py -k "not end_to_end_windowed_vs_whole and not fuzz and not windowed_encode_and_decode \
    and not windowed_decode_of_real_tokens and not do_not_import_torch" || echo "(some tests failed: see above)"
echo "== the README's main job with the shipped bundle"
OUT=$WORK/out; rm -rf "$OUT"; mkdir -p "$OUT"
RT="from meltok_runtime.cli.main import main; main()"
$PY -c "$RT" encode tests/data/music.flac -o "$OUT/music.mtok"
$PY -c "$RT" decode "$OUT/music.mtok" -o "$OUT/music.wav"
$PY -c "import soundfile; info = soundfile.info('$OUT/music.wav'); print('decoded', info.samplerate, 'Hz,', info.frames, 'frames')"
echo "== meltok-rt doctor and a short bench (no GPU under emulation: both say so)"
$PY -c "$RT" doctor || echo "(doctor: the shipped bundle does not run here, see above)"
$PY -c "$RT" bench --seconds 1 --batch 2 --repeats 1 --stream-seconds 2 --budget-seconds 60
