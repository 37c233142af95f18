#!/usr/bin/env bash
# Everything a GPU session needs that is not in git, made here (no device time), and a
# check that what travels fits the device tool's 64 MiB: the wheels (.whl, see
# gpu-wheels.sh) and the real pairs the session scores (.pairs: only the files its steps
# read, copied from ../shared/data/pairs, which does not travel). Both folders are
# ignored by git. See bench/gpu-session.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/gpu-wheels.sh
source=${AUTODIP_PAIRS_SOURCE:-../shared/data/pairs}
rm -rf .pairs
for file in fmd/FMD_WideField_BPAE_B_1_raw.png fmd/FMD_WideField_BPAE_B_1_gt.png \
            fmd/image_R_1_001.png fmd/image_R_1_avg50.png \
            fmd/WideField_BPAE_raw_rgb_new1.png fmd/WideField_BPAE_gt_rgb_new1.png \
            hagen2021/nucleus-lowsnr-sample.png hagen2021/nucleus-highsnr-sample.png \
            w2s/input_avg1_005_0.tif w2s/target_avg400_005_0.tif \
            w2s/input_avg1_010_0.tif w2s/target_avg400_010_0.tif \
            w2s/input_avg1_056_1.tif w2s/target_avg400_056_1.tif \
            w2s/input_avg1_118_2.tif w2s/target_avg400_118_2.tif; do
    mkdir -p ".pairs/$(dirname "$file")"
    cp "$source/$file" ".pairs/$file"
done
chmod -R u+w .pairs
# What the tool sends: tracked and untracked-not-ignored files, plus the carried folders.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null |
       awk 'END {print $1}')
carried=$(du -cb .whl .pairs | awk 'END {print $1}')
total=$((tree + carried))
printf 'travels: working tree %.1f MiB + .whl and .pairs %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
    "$(echo "$tree / 1048576" | bc -l)" "$(echo "$carried / 1048576" | bc -l)" \
    "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt $((64 * 1048576)) ]; then
    echo "too large for the device tool: ignore or carry less" >&2
    exit 1
fi
