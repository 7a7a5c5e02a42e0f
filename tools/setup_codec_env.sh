#!/usr/bin/env bash
# Creates .venv-codec, the separate interpreter of the semanticodec codec sidecar (codec.python), or
# re-uses it when this script has not changed. SemantiCodec needs torchaudio and timm (which imports
# torchvision); neither loads against the project's torch 2.13.0+cpu, so the codec gets its own
# environment: torch 2.11.0 / torchaudio 2.11.0 / torchvision 0.26.0 (torchaudio 2.11.1 does not load
# against torch 2.11.0), then the package itself with --no-deps from its unmodified source
# (SEMANTICODEC_SRC, default ../shared/third_party/SemantiCodec-inference, a copy of
# github.com/haoheliu/SemantiCodec-inference at commit 7c05d42). About 4.9 GB, a minute or two.
# Needs only python3 (>= 3.10) with venv and the package registries. Prints the interpreter's path.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${CODEC_VENV:-.venv-codec}
SRC=${SEMANTICODEC_SRC:-../shared/third_party/SemantiCodec-inference}
if [ ! -f "$SRC/semanticodec/__init__.py" ]; then
  echo "setup_codec_env: no SemantiCodec source at $SRC (set SEMANTICODEC_SRC to a checkout of" \
       "https://github.com/haoheliu/SemantiCodec-inference)" >&2
  exit 1
fi
stamp=$VENV/.setup.sha256
want=$( (sha256sum "$0"; find "$SRC/semanticodec" -name '*.py' -type f | sort | xargs sha256sum) | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
echo "setup_codec_env: installing SemantiCodec's environment into $VENV (about 4.9 GB, a minute or two)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet \
  torch==2.11.0 torchaudio==2.11.0 torchvision==0.26.0 \
  timm==1.0.31 vector-quantize-pytorch==1.32.0 huggingface_hub==2.4.0 scipy==1.17.1 numpy==2.4.6 \
  soundfile==0.14.0 soxr==1.1.0 pillow==13.0.0 requests==2.34.2 setuptools wheel
# The source directory may be read-only (pip builds in the tree): build from a temporary copy.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r "$SRC/." "$build/src"
chmod -R u+w "$build/src"
rm -rf "$build/src/build" "$build/src/"*.egg-info
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation "$build/src"
"$VENV/bin/python" -c "import semanticodec, soundfile, numpy" >&2
echo "$want" > "$stamp"
echo "$VENV/bin/python"
