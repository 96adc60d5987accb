#!/bin/bash
# Fills .gpu/whl (wheels the lent GPU machine lacks) and .gpu/tok (the demo model's tokenizer files)
# for bench/gpu_check.sh (DeepSpeed and the dependencies the image lacks included); run on a machine with
# PyPI and the demo model (`tuneforge` has run once).
# .gpu/ is git-ignored: the device tool carries it when the run names it (carry: .gpu/whl, .gpu/lfwhl, .gpu/tok).
# The bitsandbytes wheel (43 MB, libraries for every CUDA/ROCm/XPU version) is cut down to its CPU
# and CUDA 13.x libraries so that the carried total stays under the tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .gpu/whl .gpu/tok
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for spec in datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 transformers==5.24.0 peft==0.21.2 \
            tokenizers==0.23.3 bitsandbytes==0.50.2 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 \
            annotated-types==0.8.0 typing-inspection==0.4.5; do
  name=${spec%%==*}; name=${name//-/_}
  ls .gpu/whl/"$name"-"${spec##*==}"-*.whl >/dev/null 2>&1 && continue
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
    -d .gpu/whl "$spec"
done
# DeepSpeed is published as a source archive only: build its pure-Python wheel here (no ops compiled)
ls .gpu/whl/deepspeed-0.19.8-*.whl >/dev/null 2>&1 ||
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/whl deepspeed==0.19.8
"$PY" - <<'PY'
import glob, os, re, zipfile
keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
for path in glob.glob(".gpu/whl/bitsandbytes-*.whl"):
    with zipfile.ZipFile(path) as src:
        names = src.namelist()
        drop = {n for n in names if n.endswith(".so") and not keep.search(n)}
        if not drop:
            continue
        tmp = path + ".tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            for n in names:
                if n in drop:
                    continue
                data = src.read(n)
                if n.endswith(".dist-info/RECORD"):
                    data = b"".join(line for line in data.splitlines(True) if line.split(b",")[0].decode() not in drop)
                out.writestr(src.getinfo(n), data)
    os.replace(tmp, path)
    print(f"{path}: dropped {len(drop)} libraries, {os.path.getsize(path) / 2**20:.1f} MiB")
PY
# LLaMA-Factory 0.9.5 for the side by side, with the versions it pins (bench/compare_llamafactory.py's working set)
# and what the GPU image lacks; gpu_check.sh installs these into a folder of their own, ahead of tuneforge's on
# LF's PYTHONPATH only. (torchaudio, which LF imports, is in the image.)
mkdir -p .gpu/lfwhl
for spec in llamafactory==0.9.5 transformers==5.6.0 peft==0.18.1 trl==0.24.0 accelerate==1.11.0 datasets==4.0.0 \
            dill==0.3.8 multiprocess==0.70.16 fsspec==2025.3.0 tokenizers==0.22.2 torchdata==0.11.0 tyro==0.8.14 \
            docstring-parser==0.18.0 shtab==1.13.0 fire==0.7.1 termcolor==3.3.0 omegaconf==2.4.0 fastapi==0.165.0 \
            opentelemetry-api==1.45.2 starlette==1.10.0 sse-starlette==3.7.0 uvicorn==0.54.0 huggingface-hub==1.33.0; do
  name=${spec%%==*}; name=${name//-/_}
  ls .gpu/lfwhl/"$name"-"${spec##*==}"-*.whl >/dev/null 2>&1 && continue
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
    -d .gpu/lfwhl "$spec"
done
demo=${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/models/smollm2-135m-instruct
for f in tokenizer.json tokenizer_config.json special_tokens_map.json chat_template.jinja; do
  [ -f "$demo/$f" ] && cp "$demo/$f" .gpu/tok/
done
ls .gpu/tok/tokenizer.json >/dev/null
carried=$( (git ls-files -co --exclude-standard -z | xargs -0 du -cb | tail -1 | cut -f1; du -sb .gpu/whl .gpu/lfwhl .gpu/tok | cut -f1) | paste -sd+ | bc)
echo "carried: $carried bytes ($(( carried / 1048576 )) MiB of 64)"
